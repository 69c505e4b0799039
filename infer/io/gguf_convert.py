"""Re-encode a GGUF file with every tensor dequantized to F32 or F16 (metadata and tokenizer kept).

    python -m infer.io.gguf_convert smollm2-135m-instruct /tmp/smollm2-f32.gguf --type f32

Why: llama.cpp's float baselines (F32 / F16) need float GGUF files, and the model we ship comes
only as Q4_1. The tensors keep llama.cpp's own layout (names, the rotary row permutation of Q/K):
only their storage type changes, so llama.cpp loads the result like any file of its own. As
llama.cpp's converter does, one-dimensional tensors (norm weights, biases) stay F32 in an F16 file.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16"}


def write_dequantized(src: str, dst: str, kind: str = "f32") -> str:
    """Write `src` (a GGUF path or model name) to `dst` with every tensor F32 (kind 'f32') or F16 ('f16')."""
    import gguf

    from infer.io.gguf_loader import dequantize_tensor, metadata_value, open_gguf
    from infer.io.model_names import resolve_gguf
    if kind not in TYPES:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(TYPES)}")
    path = resolve_gguf(src)
    if path is None:
        raise FileNotFoundError(f"{src}: not a GGUF file, a directory holding one, or a known model name")
    reader = open_gguf(path)
    writer = gguf.GGUFWriter(dst, metadata_value(reader, gguf.Keys.General.ARCHITECTURE))
    for field in reader.fields.values():
        # The writer writes the architecture itself; GGUF.* are the reader's virtual fields.
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(getattr(gguf.LlamaFileType, TYPES[kind]))
    for t in reader.tensors:
        w = dequantize_tensor(t)
        writer.add_tensor(t.name, w.astype(np.float16) if kind == "f16" and w.ndim > 1 else w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="a GGUF file, a directory holding one, or a model name")
    ap.add_argument("dst", help="the GGUF file to write")
    ap.add_argument("--type", choices=sorted(TYPES), default="f32")
    args = ap.parse_args(argv)
    out = write_dequantized(args.src, args.dst, args.type)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.0f} MB, {args.type})")


if __name__ == "__main__":
    main()
