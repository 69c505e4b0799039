"""Read what an XLA GPU executable will run from its compiler dump: the thunk sequence, per decode step.

XLA writes, with `--xla_dump_to=DIR --xla_dump_hlo_as_text`, for each module:

    *.thunk_sequence_after_thunk_passes.txt   every kernel launch, cuBLAS call, copy, loop and command
                                              buffer (CUDA graph) the executable runs, in order, nested
    *.thunk_metadata.txt                      thunk id -> the HLO instruction it runs (profile_annotation)
    *gpu_after_optimizations.txt              the optimized HLO (output shapes; while loops' trip counts)

`read_dump(dir)` turns one module's three files into a `ProgramReport`: launches, kernels by family, copies
(count and bytes, with a loop's body counted once per trip), host submissions (a command buffer is one),
and the largest float32 buffer a kernel writes. Pure text in, numbers out: no GPU and no JAX needed, so
the parser is tested on a small hand-written dump (tests/test_gpu_program.py).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Dict, List, Optional, Tuple

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "s4": 0.5, "u4": 0.5, "f8e4m3fn": 1, "f8e5m2": 1, "c64": 8}
CONTAINERS = ("kCommandBuffer", "kWhile", "kConditional", "kSequential", "kDynamicSliceFusion")
COPY_KINDS = ("kCopy", "kCopyDone", "kMemcpyDeviceToDevice", "kDeviceToDevice")
GEMM_KINDS = ("kGemm", "kCublasLtMatmul")
# XLA's own kernel names (emitted fusions); any other kernel name is a custom call (our Pallas kernels)
XLA_KERNEL_PREFIXES = ("loop_", "input_", "wrapped_", "gemm_fusion", "fusion", "triton_", "cutlass_", "concatenate",
                       "transpose", "copy", "reduce", "scatter", "gather", "dynamic", "select", "convert", "add",
                       "multiply", "broadcast", "iota", "pad", "slice", "bitcast", "custom-call", "kernel_")

_THUNK = re.compile(r"^(?P<indent>\s*)(?P<id>\d+): (?P<kind>k\w+)\s*\[[^\]]*\]\s*(?P<rest>.*)$")
_SHAPE = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>\(.*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?) ")


@dataclasses.dataclass
class Thunk:
    """One line of the thunk sequence: kind, name (the kernel's, or the HLO op's), nested thunks by section."""

    id: int
    kind: str
    name: str
    sections: Dict[str, List["Thunk"]] = dataclasses.field(default_factory=dict)


def parse_thunks(text: str) -> List[Thunk]:
    """The nested thunk tree of a thunk_sequence dump (indentation nests; `condition:` / `body:` name a while
    loop's two sections, anything else nested sits in section "")."""
    root: List[Thunk] = []
    owners: List[list] = []  # [indent, container thunk, its current section] enclosing the current line
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _THUNK.match(line)
        indent = len(line) - len(line.lstrip())
        if m is None:
            label = line.strip().rstrip(":")
            while owners and owners[-1][0] >= indent:  # a section label sits at or below its loop's indent
                if owners[-1][1].kind == "kWhile":
                    break
                owners.pop()
            if label in ("condition", "body") and owners and owners[-1][1].kind == "kWhile":
                owners[-1][2] = label
            continue
        while owners and owners[-1][0] >= indent:
            owners.pop()
        rest = m.group("rest").strip()
        t = Thunk(int(m.group("id")), m.group("kind"), rest.split()[0] if rest else "")
        if owners:
            owners[-1][1].sections.setdefault(owners[-1][2], []).append(t)
        else:
            root.append(t)
        if t.kind in CONTAINERS:
            owners.append([indent, t, ""])
    return root


def parse_annotations(text: str) -> Dict[int, str]:
    """thunk id -> the HLO instruction name it runs, from a thunk_metadata dump."""
    out, ann = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("profile_annotation:"):
            ann = line.split(":", 1)[1].strip().strip('"')
        elif line.startswith("thunk_id:") and ann is not None:
            out[int(line.split(":", 1)[1])] = ann
            ann = None
    return out


def largest_element(shape: str) -> Tuple[float, Tuple[int, ...]]:
    """(bytes, dims) of the largest array in an HLO shape (a tuple's largest element)."""
    out = (0.0, ())
    for dt, dims in _SHAPE.findall(shape):
        ds = tuple(int(d) for d in dims.split(",") if d)
        n = 1
        for d in ds:
            n *= d
        out = max(out, (n * DTYPE_BYTES[dt], ds))
    return out


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape string (a tuple's elements summed)."""
    total = 0.0
    for dtype, dims in _SHAPE.findall(shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * DTYPE_BYTES[dtype]
    return total


_LAYER_OP = re.compile(r'op_name="[^"]*/layers(?:_\d+)?/')
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) \(.*\{\s*$")
_CALLS = re.compile(r"calls=%(?P<name>[\w.\-]+)")


def parse_layer_ops(text: str) -> set:
    """The instructions of an optimized HLO module made for a decoder layer: their metadata op_name, or that of
    an instruction inside the computation they call (a GEMM fusion keeps it on its dot), passes through Flax's
    `layers` scan or a `layers_{i}` block. What the per-layer launch count counts."""
    in_layer_comps, comp = set(), None
    for line in text.splitlines():
        c = _COMPUTATION.match(line)
        if c is not None:
            comp = c.group("name")
        elif comp is not None and _LAYER_OP.search(line):
            in_layer_comps.add(comp)
    out = set()
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m is None:
            continue
        called = _CALLS.search(line)
        if _LAYER_OP.search(line) or (called is not None and called.group("name") in in_layer_comps):
            out.add(m.group("name"))
    return out


def parse_hlo(text: str):
    """(instruction name -> (output shape, output bytes), while name -> known trip count) of an optimized HLO
    module (every computation's instructions; fusion internals included)."""
    shapes, trips = {}, {}
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m is None:
            continue
        shapes[m.group("name")] = (m.group("shape"), shape_bytes(m.group("shape")))
        if " while(" in line:
            t = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
            trips[m.group("name")] = int(t.group(1)) if t else None
    return shapes, trips


@dataclasses.dataclass
class CopyOp:
    """A copy (or a write) the program makes per step: what (thunk kind, HLO op), its shape, bytes per run, runs
    per step, and the dims of its largest array (to match it against the weights' shapes)."""

    kind: str
    op: str
    shape: str
    bytes: float
    runs: int
    dims: Tuple[int, ...] = ()


@dataclasses.dataclass
class ProgramReport:
    """What one executable runs per call, loops unrolled by their trip counts.

    launches: kernels + GEMM library calls + copies + memsets (every GPU operation the host enqueues or a
    graph replays); layer_launches: those made for a decoder layer's ops (the rest: embedding, final norm, LM
    head, sampling, bookkeeping); branch_launches: those inside a conditional's branches (every branch is counted,
    one runs: the sampling filters an all-greedy batch skips); kernels: by family ("xla" fusions, "triton_gemm", "cublas", "pallas" custom kernels);
    submissions: host-side launches (a command buffer is one submission, a while loop outside one submits
    its condition and body each trip); copies: every copy-like operation (kCopy, dynamic-slice fusions,
    transpose/copy kernels) with its bytes; writes: every XLA fusion's output but in-place updates
    (dynamic-update-slice, scatter), so that a weight-sized one (a padded or converted weight) is seen;
    largest_f32: the kernel writing the most float32 bytes (its float32 outputs summed); loops: trip counts
    (None: unknown, counted once); temp_bytes: from the compiled memory analysis."""

    launches: int = 0
    layer_launches: int = 0  # the launches whose HLO op came from a decoder layer (parse_layer_ops)
    branch_launches: int = 0  # the launches inside a conditional's branches (all branches counted; one runs)
    kernels: Dict[str, int] = dataclasses.field(default_factory=dict)
    submissions: int = 0
    command_buffers: int = 0
    copies: List[CopyOp] = dataclasses.field(default_factory=list)
    writes: List[CopyOp] = dataclasses.field(default_factory=list)
    largest_f32: tuple = ("", 0.0)
    loops: List[Optional[int]] = dataclasses.field(default_factory=list)
    temp_bytes: Optional[float] = None

    @property
    def copy_bytes(self) -> float:
        return sum(c.bytes * c.runs for c in self.copies)

    def copies_at_least(self, nbytes: float) -> List[CopyOp]:
        """The copies of at least `nbytes` per run (e.g. a weight's size)."""
        return [c for c in self.copies if c.bytes >= nbytes]

    def writes_of(self, weight_shapes) -> List[CopyOp]:
        """The XLA fusions (not copies) whose largest output is a weight's size: as many elements as one of
        `weight_shapes` and the same largest dim (a weight converted, or multiplied by a vector: a matrix-vector
        product XLA ran as multiply + reduce), or, for a pad fusion, up to 25% more of both (padded to a tile)."""
        def size(dims):
            n = 1
            for d in dims:
                n *= d
            return n, max(dims, default=0)

        def matches(w):
            n, m = size(w.dims)
            for ws in weight_shapes:
                wn, wm = size(ws)
                if (n, m) == (wn, wm) or ("pad" in w.op and wn < n <= 1.25 * wn and wm <= m <= 1.25 * wm):
                    return True
            return False
        return [w for w in self.writes if matches(w)]

    def summary(self) -> dict:
        return {"launches": self.launches, **{f"kernels_{k}": v for k, v in sorted(self.kernels.items())},
                "submissions": self.submissions, "command_buffers": self.command_buffers,
                "copies": sum(c.runs for c in self.copies), "copy_MB": self.copy_bytes / 1e6,
                "largest_f32_MB": self.largest_f32[1] / 1e6, "temp_MB": (self.temp_bytes or 0) / 1e6}


def kernel_family(kind: str, name: str) -> str:
    if kind in GEMM_KINDS:
        return "cublas"
    if name.startswith("gemm_fusion") or name.startswith("triton_gemm"):
        return "triton_gemm"
    return "xla" if name.startswith(XLA_KERNEL_PREFIXES) else "pallas"


def _is_copy_kernel(name: str) -> bool:
    base = name.split(".")[0]
    return base in ("wrapped_transpose", "wrapped_copy") or "transpose_fusion" in base or "copy_fusion" in base


def _in_place(name: str) -> bool:
    """An update XLA makes in place in its operand's buffer (its output shape is the whole buffer)."""
    return "dynamic_update_slice" in name or "scatter" in name


def summarize(thunks: List[Thunk], annotations: Dict[int, str], shapes: dict, trips: dict,
              layer_ops: frozenset = frozenset()) -> ProgramReport:
    """Walk the thunk tree once, counting each thunk `runs` times (the product of its enclosing loops' trips);
    a thunk whose HLO instruction is in `layer_ops` counts toward layer_launches too."""
    rep = ProgramReport()

    def out_of(t):
        return shapes.get(annotations.get(t.id, t.name), ("", 0.0))

    def walk(seq, runs, in_graph, in_branch=False):
        for t in seq:
            if t.kind == "kCommandBuffer":
                rep.command_buffers += 1
                rep.submissions += 0 if in_graph else runs
                walk(t.sections.get("", []), runs, True, in_branch)
            elif t.kind == "kWhile":
                trip = trips.get(annotations.get(t.id, ""))
                rep.loops.append(trip)
                n = trip if trip is not None else 1
                walk(t.sections.get("condition", []), runs * (n + 1), in_graph, in_branch)
                walk(t.sections.get("body", []), runs * n, in_graph, in_branch)
            elif t.kind == "kDynamicSliceFusion":
                for c in t.sections.get("", []):
                    shape, nbytes = out_of(c)
                    rep.copies.append(CopyOp(t.kind, annotations.get(c.id, c.name), shape, nbytes, runs))
                rep.launches += runs
                rep.submissions += 0 if in_graph else runs
            elif t.kind in CONTAINERS:
                for sec in t.sections.values():
                    walk(sec, runs, in_graph, in_branch or t.kind == "kConditional")
            else:
                rep.launches += runs
                rep.layer_launches += runs if annotations.get(t.id, t.name) in layer_ops else 0
                rep.branch_launches += runs if in_branch else 0
                rep.submissions += 0 if in_graph else runs
                shape, nbytes = out_of(t)
                if t.kind in COPY_KINDS:
                    rep.copies.append(CopyOp(t.kind, annotations.get(t.id, t.name), shape, nbytes, runs))
                    continue
                if t.kind.startswith("kMem"):
                    continue
                fam = "pallas" if annotations.get(t.id, "").startswith("pallas_call") else \
                    kernel_family(t.kind, t.name)
                rep.kernels[fam] = rep.kernels.get(fam, 0) + runs
                if _is_copy_kernel(t.name):
                    rep.copies.append(CopyOp(t.kind, t.name, shape, nbytes, runs))
                elif fam == "xla" and not _in_place(t.name):
                    rep.writes.append(CopyOp(t.kind, t.name, shape, *largest_element(shape)[:1], runs,
                                             largest_element(shape)[1]))
                f32 = shape_bytes(" ".join(f"f32[{d}]" for dt, d in _SHAPE.findall(shape) if dt == "f32"))
                if f32 > rep.largest_f32[1]:
                    rep.largest_f32 = (f"{t.name} {shape}", f32)

    walk(thunks, 1, False)
    return rep


def find_module(dump_dir: str, module: Optional[str] = None) -> str:
    """The file prefix of the one module in `dump_dir` with a thunk sequence (or the one whose name contains
    `module`); refuses, naming them, when there are several."""
    seqs = sorted(glob.glob(os.path.join(dump_dir, "*.thunk_sequence_after_thunk_passes.txt")))
    if module:
        seqs = [s for s in seqs if module in os.path.basename(s)]
    if len(seqs) != 1:
        raise ValueError(f"{dump_dir}: expected one module's thunk sequence"
                         f"{' matching ' + repr(module) if module else ''}, found {len(seqs)}: "
                         f"{[os.path.basename(s) for s in seqs][:6]}")
    return seqs[0][: -len(".thunk_sequence_after_thunk_passes.txt")]


def read_dump(dump_dir: str, module: Optional[str] = None) -> ProgramReport:
    """The ProgramReport of the module dumped in `dump_dir` (see find_module)."""
    prefix = find_module(dump_dir, module)
    read = lambda path: open(path, encoding="utf-8").read()
    hlo = glob.glob(glob.escape(prefix) + ".*gpu_after_optimizations.txt")
    hlo_text = read(hlo[0]) if hlo else ""
    shapes, trips = parse_hlo(hlo_text)
    return summarize(parse_thunks(read(prefix + ".thunk_sequence_after_thunk_passes.txt")),
                     parse_annotations(read(prefix + ".thunk_metadata.txt")), shapes, trips,
                     frozenset(parse_layer_ops(hlo_text)))
