"""Compile every Triton kernel of the package for an H100 (sm_90) without a GPU.

The CPU suite runs the kernels under TRITON_INTERPRET=1, which does not type-check them the
way the GPU compiler does (a loop-carried variable changing shape passes the interpreter and
fails to compile). This compiles each kernel, with the constexpr variants the launchers use,
down to a cubin. Run in a process where TRITON_INTERPRET=0 (tests/ops/test_kernels_compile_cpu.py):
    TRITON_INTERPRET=0 python -m tests.hopper_compile
"""

from __future__ import annotations

import os

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("run with TRITON_INTERPRET=0: interpreted kernels cannot be compiled")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from custom_ops.dense_causal.kernel import _merge_two  # noqa: E402
from custom_ops.top_tiles.kernel import _top_tiles  # noqa: E402
from custom_ops.vertical_slash.backward import (  # noqa: E402
    _vertical_slash_bwd_bands,
    _vertical_slash_bwd_cols,
    _vertical_slash_bwd_rows,
)
from custom_ops.vertical_slash.kernel import _vertical_slash_fwd  # noqa: E402
from custom_ops.vertical_slash_scores.kernel import _column_and_diagonal_sums, _row_stats  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
H100_SHARED_BYTES = 232448  # 227 KiB: the most shared memory one block may opt into on sm_90


def compile_for_h100(kernel, pointers: dict[str, str], constants: dict, floats=(), **options) -> None:
    """Compile `kernel` with pointer dtypes `pointers`, constexpr values `constants`; every
    other argument is an int32 scalar, except the names in `floats` (fp32)."""
    signature = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        else:
            signature[name] = "fp32" if name in floats else "i32"
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=H100, options=options)
    # a launch asking for more shared memory than the SM has compiles, then fails on the GPU
    shared = compiled.metadata.shared
    if shared > H100_SHARED_BYTES:
        raise RuntimeError(f"{kernel.fn.__name__} {constants} {options}: {shared} bytes of shared memory, "
                           f"more than an H100 block can have ({H100_SHARED_BYTES})")


def main() -> None:
    bf16 = {n: "*bf16" for n in ("Q", "K", "V", "KCols", "VCols", "Out", "DO", "DQ")}
    fp32 = {n: "*fp32" for n in ("Lse", "Delta", "DK", "DV", "DKCols", "DVCols")}
    index = {n: "*i32" for n in ("Cols", "ColCount", "PieceLo", "PieceRanges", "Dists", "DistCount", "Clamped")}
    for head_dim, block_d in ((64, 64), (128, 128), (96, 128)):
        tma = head_dim == block_d  # as launch_vertical_slash decides
        rows = f"tensordesc<bf16[64,{block_d}]>"
        for on_bands in (True, False):
            col_tma, piece_tma = tma and on_bands, tma
            descriptors = {"KDesc": rows if piece_tma else "*bf16", "VDesc": rows if piece_tma else "*bf16",
                           "KColsDesc": rows if col_tma else "*bf16", "VColsDesc": rows if col_tma else "*bf16"}
            for store_lse in (False, True):
                compile_for_h100(
                    _vertical_slash_fwd, {**bf16, **fp32, **index, **descriptors, "Dedup": "*i8"},
                    {"BLOCK": 64, "HEAD_DIM": head_dim, "BLOCK_D": block_d, "DEDUP_ON_BANDS": on_bands,
                     "COL_BLOCK": 64, "COL_STAGES": 3, "COL_TMA": col_tma, "PIECE_TMA": piece_tma,
                     "STORE_LSE": store_lse},
                    floats=("qk_scale",), num_warps=4, num_stages=2,
                )
            backward = {"BLOCK": 64, "HEAD_DIM": head_dim, "BLOCK_D": block_d, "DEDUP_ON_BANDS": on_bands,
                        "COL_BLOCK": 64}
            # the bands pass stores dK / dV in the inputs' dtype
            bands = {**bf16, **fp32, "DK": "*bf16", "DV": "*bf16", "Windows": "*i32", "WindowCount": "*i32",
                     "Clamped": "*i32", "Bands": "*i8", "Dedup": "*i8", "Slots": "*i32"}
            row_pointers = {**bf16, **fp32, **index, "Dedup": "*i8"}
            band_constants = {k: v for k, v in backward.items() if k != "COL_BLOCK"}
            for kernel, pointers, constants in (
                (_vertical_slash_bwd_rows, row_pointers, backward),
                (_vertical_slash_bwd_cols, row_pointers, backward),
                (_vertical_slash_bwd_bands, bands, {**band_constants, "HAS_COLS": True}),
                (_vertical_slash_bwd_bands, bands, {**band_constants, "HAS_COLS": False}),
            ):
                compile_for_h100(kernel, pointers, constants, floats=("qk_scale", "sm_scale"),
                                 num_warps=4, num_stages=1)
    for bits, dtype in ((16, "*i16"), (32, "*i32")):
        compile_for_h100(_top_tiles, {"Bits": dtype, "Tiles": "*i32", "Count": "*i32"},
                         {"CHUNK": 512, "KEY_BITS": bits}, num_warps=2)
    stats = {"Scores": "*bf16", "PartMax": "*fp32", "PartSum": "*fp32"}
    compile_for_h100(_row_stats, stats, {"BLOCK": 1024}, num_warps=4)
    for columns, diagonals in ((True, True), (True, False), (False, True)):
        compile_for_h100(_column_and_diagonal_sums, {**stats, "Vertical": "*fp32", "Slash": "*fp32"},
                         {"BLOCK_L": 2, "BLOCK_N": 2048, "BLOCK_SPLIT": 32, "COLUMNS": columns,
                          "DIAGONALS": diagonals}, num_warps=4)
    for dim in (64, 96, 128):
        compile_for_h100(_merge_two, {"A": "*bf16", "B": "*bf16", "LseA": "*fp32", "LseB": "*fp32", "Out": "*bf16"},
                         {"DIM": dim, "DIM_P2": triton.next_power_of_2(dim), "BLOCK_ROWS": 64}, num_warps=4)
    print("all kernels compiled for sm_90")


if __name__ == "__main__":
    main()
