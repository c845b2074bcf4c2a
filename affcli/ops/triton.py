"""The Triton path: one kernel per op, for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1).

The functions mirror `affcli.ops.cpu` name for name; inputs arrive validated and contiguous.
The searches reproduce the CPU results bit for bit: squared distances are evaluated in the same
order, in float32, with floating-point contraction (FMA) disabled, and every tie is resolved
toward the lower index as the CPU loops' strict comparisons do.

Limits: each batch element's tensors must hold fewer than 2**31 elements (offsets within a
batch element are 32-bit). The backward gathers accumulate with atomic adds, so on a GPU the
order of float additions, and therefore the last bits of a gradient, may vary from run to run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import triton
import triton.language as tl

# The largest cloud FPS keeps entirely in registers (one program per cloud); larger clouds keep
# the running distances in a global scratch buffer and stream over it in tiles of this size.
FPS_MAX_REGISTER_BLOCK = 8192
FPS_TILE = 2048
# FMA would round differently from the CPU path and break exact index equality on near-ties.
_EXACT = {"enable_fp_fusion": False}
_INT_MAX = tl.constexpr(2147483647)  # "no index" sentinel for index-min reductions


@contextlib.contextmanager
def _on(t: torch.Tensor) -> Iterator[None]:
    # Triton launches on the current CUDA device, which need not be the tensor's.
    if t.is_cuda:
        with torch.cuda.device(t.device):
            yield
    else:
        yield


def _block(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(int(n), 1)), cap)


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (TRITON_INTERPRET=1 when triton was
    first imported), the only way they run on CPU tensors. Decided once, at import."""
    return type(_gather_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------- kernels


@triton.jit
def _fps_kernel(xyz_ptr, starts_ptr, out_ptr, dist_ptr, N, n_samples,
                BLOCK_N: tl.constexpr, IN_REGISTERS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    base = xyz_ptr + b * N * 3
    out = out_ptr + b * n_samples
    far = tl.load(starts_ptr + b).to(tl.int64)
    tl.store(out, far)
    offs = tl.arange(0, BLOCK_N)
    if IN_REGISTERS:
        mask = offs < N
        x = tl.load(base + offs * 3, mask=mask, other=0.0)
        y = tl.load(base + offs * 3 + 1, mask=mask, other=0.0)
        z = tl.load(base + offs * 3 + 2, mask=mask, other=0.0)
        # Padding lanes sit at -1 so they never win the argmax (real distances are >= 0).
        dist = tl.where(mask, float("inf"), -1.0)
        for i in range(1, n_samples):
            px = tl.load(base + far * 3)
            py = tl.load(base + far * 3 + 1)
            pz = tl.load(base + far * 3 + 2)
            dx = x - px
            dy = y - py
            dz = z - pz
            dist = tl.minimum(dist, dx * dx + dy * dy + dz * dz)
            best = tl.max(dist, axis=0)
            far = tl.min(tl.where(dist == best, offs, _INT_MAX), axis=0).to(tl.int64)
            tl.store(out + i, far)
    else:
        dbase = dist_ptr + b * N  # pre-filled with +inf by the host
        for i in range(1, n_samples):
            px = tl.load(base + far * 3)
            py = tl.load(base + far * 3 + 1)
            pz = tl.load(base + far * 3 + 2)
            best = tl.full([], -1.0, tl.float32)
            best_idx = tl.full([], 0, tl.int64)
            for start in range(0, N, BLOCK_N):
                o = start + offs
                mask = o < N
                dx = tl.load(base + o * 3, mask=mask, other=0.0) - px
                dy = tl.load(base + o * 3 + 1, mask=mask, other=0.0) - py
                dz = tl.load(base + o * 3 + 2, mask=mask, other=0.0) - pz
                d = tl.minimum(tl.load(dbase + o, mask=mask, other=-1.0),
                               dx * dx + dy * dy + dz * dz)
                tl.store(dbase + o, d, mask=mask)
                tile_best = tl.max(d, axis=0)
                tile_idx = tl.min(tl.where(d == tile_best, o, _INT_MAX), axis=0).to(tl.int64)
                # Tiles come in index order: only a strictly larger maximum moves the argmax.
                take = tile_best > best
                best_idx = tl.where(take, tile_idx, best_idx)
                best = tl.where(take, tile_best, best)
            far = best_idx
            tl.store(out + i, far)


@triton.jit
def _ball_query_kernel(xyz_ptr, centers_ptr, out_ptr, N, M, r2, K,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    c = centers_ptr + (b * M + offs_m) * 3
    cx = tl.load(c, mask=mask_m, other=0.0)
    cy = tl.load(c + 1, mask=mask_m, other=0.0)
    cz = tl.load(c + 2, mask=mask_m, other=0.0)
    rows = out_ptr + (b * M + offs_m) * K
    base = xyz_ptr + b * N * 3
    # Rows past M count as full so they never keep the scan going.
    cnt = tl.where(mask_m, 0, K)
    first = tl.zeros([BLOCK_M], tl.int64)
    start = 0
    # Scan in index order and stop as soon as every centre of the block has its k hits.
    while (start < N) & (tl.min(cnt, axis=0) < K):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        dx = tl.load(base + offs_n * 3, mask=mask_n, other=0.0)[None, :] - cx[:, None]
        dy = tl.load(base + offs_n * 3 + 1, mask=mask_n, other=0.0)[None, :] - cy[:, None]
        dz = tl.load(base + offs_n * 3 + 2, mask=mask_n, other=0.0)[None, :] - cz[:, None]
        hit = ((dx * dx + dy * dy + dz * dz) <= r2) & mask_n[None, :]
        hits = hit.to(tl.int32)
        # Slot of each hit = hits before the tile + running count within the tile.
        pos = cnt[:, None] + tl.cumsum(hits, axis=1) - 1
        tl.store(rows[:, None] + pos, offs_n[None, :].to(tl.int64), mask=hit & (pos < K))
        n_hit = tl.sum(hits, axis=1)
        tile_first = tl.min(tl.where(hit, offs_n[None, :], _INT_MAX), axis=1).to(tl.int64)
        first = tl.where((cnt == 0) & (n_hit > 0), tile_first, first)
        cnt += n_hit
        start += BLOCK_N
    # Unused slots repeat the first hit (0 when there is none), as the reference does.
    fill = first[:, None] + tl.zeros([BLOCK_M, BLOCK_K], tl.int64)
    for ks in range(0, K, BLOCK_K):
        offs_k = ks + tl.arange(0, BLOCK_K)
        pad = (offs_k[None, :] >= cnt[:, None]) & (offs_k[None, :] < K) & mask_m[:, None]
        tl.store(rows[:, None] + offs_k[None, :], fill, mask=pad)


@triton.jit
def _three_nn_kernel(unknown_ptr, known_ptr, dist_ptr, idx_ptr, N, M,
                     BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < N
    u = unknown_ptr + (b * N + offs_q) * 3
    ux = tl.load(u, mask=mask_q, other=0.0)
    uy = tl.load(u + 1, mask=mask_q, other=0.0)
    uz = tl.load(u + 2, mask=mask_q, other=0.0)
    base = known_ptr + b * M * 3
    d1 = tl.full([BLOCK_Q], float("inf"), tl.float32)
    d2 = tl.full([BLOCK_Q], float("inf"), tl.float32)
    d3 = tl.full([BLOCK_Q], float("inf"), tl.float32)
    i1 = tl.zeros([BLOCK_Q], tl.int32)
    i2 = tl.zeros([BLOCK_Q], tl.int32)
    i3 = tl.zeros([BLOCK_Q], tl.int32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        dx = tl.load(base + offs_m * 3, mask=mask_m, other=0.0)[None, :] - ux[:, None]
        dy = tl.load(base + offs_m * 3 + 1, mask=mask_m, other=0.0)[None, :] - uy[:, None]
        dz = tl.load(base + offs_m * 3 + 2, mask=mask_m, other=0.0)[None, :] - uz[:, None]
        d = tl.where(mask_m[None, :], dx * dx + dy * dy + dz * dz, float("inf"))
        # Take the tile's three smallest (ties: lowest index) in order and insert each with
        # strict comparisons: the same result as the CPU's one-point-at-a-time scan, since all
        # earlier tiles hold lower indices.
        for _ in tl.static_range(3):
            c = tl.min(d, axis=1)
            ci = tl.min(tl.where(d == c[:, None], offs_m[None, :], _INT_MAX), axis=1)
            d = tl.where(offs_m[None, :] == ci[:, None], float("inf"), d)
            lt1 = c < d1
            lt2 = c < d2
            lt3 = c < d3
            d3 = tl.where(lt2, d2, tl.where(lt3, c, d3))
            i3 = tl.where(lt2, i2, tl.where(lt3, ci, i3))
            d2 = tl.where(lt1, d1, tl.where(lt2, c, d2))
            i2 = tl.where(lt1, i1, tl.where(lt2, ci, i2))
            d1 = tl.where(lt1, c, d1)
            i1 = tl.where(lt1, ci, i1)
    o = (b * N + offs_q) * 3
    tl.store(dist_ptr + o, d1, mask=mask_q)
    tl.store(dist_ptr + o + 1, d2, mask=mask_q)
    tl.store(dist_ptr + o + 2, d3, mask=mask_q)
    tl.store(idx_ptr + o, i1.to(tl.int64), mask=mask_q)
    tl.store(idx_ptr + o + 1, i2.to(tl.int64), mask=mask_q)
    tl.store(idx_ptr + o + 2, i3.to(tl.int64), mask=mask_q)


@triton.jit
def _gather_kernel(feat_ptr, idx_ptr, out_ptr, C, N, P,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # One [BLOCK_C, BLOCK_P] tile: the indices are loaded once and reused for every channel.
    b = tl.program_id(2).to(tl.int64)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask = (offs_c < C)[:, None] & mask_p[None, :]
    idx = tl.load(idx_ptr + b * P + offs_p, mask=mask_p, other=0)
    v = tl.load(feat_ptr + b * C * N + offs_c[:, None] * N + idx[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + b * C * P + offs_c[:, None] * P + offs_p[None, :], v, mask=mask)


@triton.jit
def _scatter_add_kernel(grad_ptr, idx_ptr, out_ptr, C, N, P,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # Several (m, j) may name the same point, in this tile or another: hence atomics.
    b = tl.program_id(2).to(tl.int64)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask = (offs_c < C)[:, None] & mask_p[None, :]
    idx = tl.load(idx_ptr + b * P + offs_p, mask=mask_p, other=0)
    g = tl.load(grad_ptr + b * C * P + offs_c[:, None] * P + offs_p[None, :], mask=mask,
                other=0.0)
    tl.atomic_add(out_ptr + b * C * N + offs_c[:, None] * N + idx[None, :], g, mask=mask)


@triton.jit
def _interp_kernel(feat_ptr, idx_ptr, w_ptr, out_ptr, C, M, N,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N
    mask = (offs_c < C)[:, None] & mask_p[None, :]
    src = feat_ptr + b * C * M + offs_c[:, None] * M
    nb = (b * N + offs_p) * 3
    acc = tl.zeros([BLOCK_C, BLOCK_P], out_ptr.dtype.element_ty)
    for j in tl.static_range(3):
        i = tl.load(idx_ptr + nb + j, mask=mask_p, other=0)
        w = tl.load(w_ptr + nb + j, mask=mask_p, other=0.0)
        f = tl.load(src + i[None, :], mask=mask, other=0.0)
        acc += (f * w[None, :]).to(acc.dtype)
    tl.store(out_ptr + b * C * N + offs_c[:, None] * N + offs_p[None, :], acc, mask=mask)


@triton.jit
def _interp_backward_kernel(grad_ptr, idx_ptr, w_ptr, out_ptr, C, M, N,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # A known point feeds many unknown ones, in any tile: hence atomics.
    b = tl.program_id(2).to(tl.int64)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N
    mask = (offs_c < C)[:, None] & mask_p[None, :]
    g = tl.load(grad_ptr + b * C * N + offs_c[:, None] * N + offs_p[None, :], mask=mask,
                other=0.0).to(out_ptr.dtype.element_ty)
    dst = out_ptr + b * C * M + offs_c[:, None] * M
    nb = (b * N + offs_p) * 3
    for j in tl.static_range(3):
        i = tl.load(idx_ptr + nb + j, mask=mask_p, other=0)
        w = tl.load(w_ptr + nb + j, mask=mask_p, other=0.0).to(g.dtype)
        tl.atomic_add(dst + i[None, :], g * w[None, :], mask=mask)


# --------------------------------------------------------------------------- entry points


def farthest_point_sample(xyz: torch.Tensor, n: int, starts: torch.Tensor) -> torch.Tensor:
    b, num, _ = xyz.shape
    out = torch.empty((b, n), dtype=torch.int64, device=xyz.device)
    if out.numel() == 0:
        return out
    in_registers = triton.next_power_of_2(num) <= FPS_MAX_REGISTER_BLOCK
    if in_registers:
        block = triton.next_power_of_2(num)
        scratch = xyz  # unused by the kernel on this path
    else:
        block = _block(num, FPS_TILE)
        scratch = torch.full((b, num), float("inf"), dtype=torch.float32, device=xyz.device)
    # One program walks a whole cloud; spread a large register block over more warps.
    warps = max(4, min(16, block // 512))
    with _on(xyz):
        _fps_kernel[(b,)](xyz, starts.to(torch.int64).contiguous(), out, scratch, num, n,
                          BLOCK_N=block, IN_REGISTERS=in_registers, num_warps=warps, **_EXACT)
    return out


def ball_query(xyz: torch.Tensor, centers: torch.Tensor, radius: float, k: int
               ) -> torch.Tensor:
    b, num, _ = xyz.shape
    m = centers.shape[1]
    out = torch.zeros((b, m, k), dtype=torch.int64, device=xyz.device)
    if out.numel() == 0:
        return out
    # r^2 rounded to float32 once, as the CPU path does, so both compare against one value.
    r2 = float(torch.tensor(radius * radius, dtype=torch.float32))
    block_m = _block(m, 16)
    grid = (triton.cdiv(m, block_m), b)
    with _on(xyz):
        _ball_query_kernel[grid](xyz, centers, out, num, m, r2, k, BLOCK_M=block_m,
                                 BLOCK_N=_block(num, 128), BLOCK_K=_block(k, 64),
                                 **_EXACT)
    return out


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, _ = unknown.shape
    m = known.shape[1]
    dist = torch.empty((b, n, 3), dtype=torch.float32, device=unknown.device)
    idx = torch.empty((b, n, 3), dtype=torch.int64, device=unknown.device)
    if dist.numel() == 0:
        return dist, idx
    block_q = _block(n, 32)
    grid = (triton.cdiv(n, block_q), b)
    with _on(unknown):
        _three_nn_kernel[grid](unknown, known, dist, idx, n, m, BLOCK_Q=block_q,
                               BLOCK_M=_block(m, 64), **_EXACT)
    return dist, idx


def _tile_grid(p: int, c: int, b: int) -> tuple[tuple[int, int, int], int, int]:
    # The long point axis goes on grid axis 0, the only one not capped at 65,535.
    block_p, block_c = _block(p, 128), _block(c, 16)
    return (triton.cdiv(p, block_p), triton.cdiv(c, block_c), b), block_c, block_p


def gather_group(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b, c, num = features.shape
    _, m, k = idx.shape
    out = torch.empty((b, c, m, k), dtype=features.dtype, device=features.device)
    if out.numel() == 0:
        return out
    grid, block_c, block_p = _tile_grid(m * k, c, b)
    with _on(features):
        _gather_kernel[grid](features, idx.to(torch.int64).contiguous(), out, c, num, m * k,
                             BLOCK_C=block_c, BLOCK_P=block_p)
    return out


def gather_group_backward(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    b, c, m, k = grad.shape
    out = torch.zeros((b, c, n), dtype=grad.dtype, device=grad.device)
    if grad.numel() == 0:
        return out
    grid, block_c, block_p = _tile_grid(m * k, c, b)
    with _on(grad):
        _scatter_add_kernel[grid](grad.contiguous(), idx.to(torch.int64).contiguous(), out, c, n,
                                  m * k, BLOCK_C=block_c, BLOCK_P=block_p)
    return out


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor
                      ) -> torch.Tensor:
    b, c, m = features.shape
    n = idx.shape[1]
    out = torch.empty((b, c, n), dtype=torch.promote_types(features.dtype, weight.dtype),
                      device=features.device)
    if out.numel() == 0:
        return out
    grid, block_c, block_p = _tile_grid(n, c, b)
    with _on(features):
        _interp_kernel[grid](features, idx.to(torch.int64).contiguous(), weight.contiguous(),
                             out, c, m, n, BLOCK_C=block_c, BLOCK_P=block_p)
    return out


def three_interpolate_backward(grad: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                               m: int) -> torch.Tensor:
    b, c, n = grad.shape
    out = torch.zeros((b, c, m), dtype=torch.promote_types(grad.dtype, weight.dtype),
                      device=grad.device)
    if grad.numel() == 0:
        return out
    grid, block_c, block_p = _tile_grid(n, c, b)
    with _on(grad):
        _interp_backward_kernel[grid](grad.contiguous(), idx.to(torch.int64).contiguous(),
                                      weight.contiguous(), out, c, m, n, BLOCK_C=block_c,
                                      BLOCK_P=block_p)
    return out
