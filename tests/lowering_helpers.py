"""Shared by the lowering tests: which ops read an array in a traced program."""


def readers(jaxpr, var):
    """Primitive names of the ops that read `var`, looking through nested jit calls (pallas_call is a leaf)."""
    found = set()
    for eqn in jaxpr.eqns:
        positions = [i for i, x in enumerate(eqn.invars) if x is var]
        if not positions:
            continue
        sub = eqn.params.get("jaxpr")
        if eqn.primitive.name != "pallas_call" and sub is not None:
            inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr or Jaxpr
            for i in positions:
                found |= readers(inner, inner.invars[i])
        else:
            found.add(eqn.primitive.name)
    return found
