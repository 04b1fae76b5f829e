// Generic library kernels of the CUDA backend: any strides, any float storage type (f32, bf16,
// f16), f32 arithmetic. They back the cases the fast paths (cuBLASLt bf16 GEMMs, the tensor-core
// flash attention) do not take: f32 storage, head dims other than 64 / 128, odd strides, conv.
// Compiled after the generated-kernel prelude (storage types, to_f / from_f); the exec module
// instantiates them through small extern "C" wrappers per dtype combination.

// ---------------------------------------------------------------------------------------------
// GEMM: c[b, m, n] = sum_k a(b, m, k) * b(b, k, n); c dense [batch, M, N]. 16x16 tiles, one
// output element per thread (256 threads), shared-memory staged operands.

#define QG_TILE 16

template <typename TA, typename TB, typename TC>
__device__ __forceinline__ void qie_gemm(const TA* a, const TB* b, TC* c, int batch, int M, int N,
                                         int K, long long sab, long long sam, long long sak,
                                         long long sbb, long long sbk, long long sbn) {
    __shared__ float As[QG_TILE][QG_TILE + 1];
    __shared__ float Bs[QG_TILE][QG_TILE + 1];
    const int tx = threadIdx.x % QG_TILE, ty = threadIdx.x / QG_TILE;
    const int m = blockIdx.y * QG_TILE + ty, n = blockIdx.x * QG_TILE + tx;
    for (long long bz = blockIdx.z; bz < batch; bz += gridDim.z) {
        float acc = 0.0f;
        for (int k0 = 0; k0 < K; k0 += QG_TILE) {
            // As[r][kk] = a(tile row r, k0 + kk), Bs[kk][cc] = b(k0 + kk, tile column cc).
            const int ka = k0 + tx;
            As[ty][tx] = (m < M && ka < K) ? to_f(a[bz * sab + m * sam + ka * sak]) : 0.0f;
            const int kb = k0 + ty;
            Bs[ty][tx] = (kb < K && n < N) ? to_f(b[bz * sbb + kb * sbk + n * sbn]) : 0.0f;
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < QG_TILE; ++kk) acc += As[ty][kk] * Bs[kk][tx];
            __syncthreads();
        }
        if (m < M && n < N) c[bz * M * (long long)N + (long long)m * N + n] = from_f<TC>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// Attention: o[b, i, h, :] = softmax_j(scale * q[b, i, h, :] . k[b, j, h, :], masked keys -inf)
// v[b, j, h, :]. One block of 128 threads per (query row, head, batch); two passes over the keys
// (max, then exp-sum and the weighted sum of v in chunks of 128 keys). A row whose keys are all
// masked gets zeros. o dense [B, Sq, H, Dv]. D, Dv <= QA_MAX_D.

#define QA_THREADS 128
#define QA_MAX_D 512

__device__ __forceinline__ float qa_block_reduce(float v, bool is_max, float* red) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < QA_THREADS / 32; ++i) r = is_max ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

// The softmax pass of one query row (block = row i of head h, batch blockIdx.z): loads the row
// into `qrow`, returns the row max of the scaled scores `mx` (-inf when every key is masked),
// the sum `l` of exp(s - mx) and, per thread, acc[c] = sum_j exp(s_j - mx) v[j, t + c * 128].
template <typename TQ, typename TK, typename TV>
__device__ __forceinline__ void qa_softmax_row(
    const TQ* q, const TK* k, const TV* v, const u8_t* mask, int Sk, int D, int Dv, float scale,
    long long qb, long long qs, long long qh, long long qd, long long kb, long long ks,
    long long kh, long long kd, long long vb, long long vs, long long vh, long long vd,
    long long mb, long long ms, float* qrow, float* p, float* red, float* acc, float& mx,
    float& l) {
    const int i = blockIdx.x, h = blockIdx.y, t = threadIdx.x;
    const long long bz = blockIdx.z;
    for (int d = t; d < D; d += QA_THREADS) qrow[d] = to_f(q[bz * qb + i * qs + h * qh + d * qd]);
    __syncthreads();
    const TK* kbase = k + bz * kb + h * kh;
    const TV* vbase = v + bz * vb + h * vh;
    mx = -QINF;
    for (int j = t; j < Sk; j += QA_THREADS) {
        if (mask && !mask[bz * mb + j * ms]) continue;
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += qrow[d] * to_f(kbase[j * ks + d * kd]);
        mx = fmaxf(mx, s * scale);
    }
    mx = qa_block_reduce(mx, true, red);
#pragma unroll
    for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) acc[c] = 0.0f;
    l = 0.0f;
    for (int j0 = 0; j0 < Sk; j0 += QA_THREADS) {
        const int j = j0 + t;
        float pj = 0.0f;
        if (j < Sk && mx != -QINF && !(mask && !mask[bz * mb + j * ms])) {
            float s = 0.0f;
            for (int d = 0; d < D; ++d) s += qrow[d] * to_f(kbase[j * ks + d * kd]);
            pj = expf(s * scale - mx);
        }
        l += pj;
        __syncthreads();
        p[t] = pj;
        __syncthreads();
        const int cnt = min(QA_THREADS, Sk - j0);
#pragma unroll
        for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) {
            const int d = t + c * QA_THREADS;
            if (d < Dv)
                for (int jj = 0; jj < cnt; ++jj)
                    acc[c] += p[jj] * to_f(vbase[(long long)(j0 + jj) * vs + d * vd]);
        }
    }
    l = qa_block_reduce(l, false, red);
}

#define QA_ROW_ARGS                                                                             \
    q, k, v, mask, Sk, D, Dv, scale, qb, qs, qh, qd, kb, ks, kh, kd, vb, vs, vh, vd, mb, ms

template <typename TQ, typename TK, typename TV, typename TO>
__device__ __forceinline__ void qie_attention(
    const TQ* q, const TK* k, const TV* v, const u8_t* mask, TO* o, int Sq, int Sk, int H, int D,
    int Dv, float scale, long long qb, long long qs, long long qh, long long qd, long long kb,
    long long ks, long long kh, long long kd, long long vb, long long vs, long long vh,
    long long vd, long long mb, long long ms) {
    __shared__ float qrow[QA_MAX_D];
    __shared__ float p[QA_THREADS];
    __shared__ float red[QA_THREADS / 32];
    float acc[QA_MAX_D / QA_THREADS];
    float mx, l;
    qa_softmax_row(QA_ROW_ARGS, qrow, p, red, acc, mx, l);
    const int i = blockIdx.x, h = blockIdx.y, t = threadIdx.x;
    const long long bz = blockIdx.z;
    const float inv = (mx == -QINF || l == 0.0f) ? 0.0f : 1.0f / l;
    TO* orow = o + ((bz * Sq + i) * (long long)H + h) * Dv;
#pragma unroll
    for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) {
        const int d = t + c * QA_THREADS;
        if (d < Dv) orow[d] = from_f<TO>(acc[c] * inv);
    }
}

// Attention, tiled (head dims up to MAXD, 64 or 96): one thread per query row, QT_ROWS rows of one
// (head, batch) per block; key / value tiles of QT_KEYS rows staged in shared memory (coalesced
// along the head dim) and read as broadcasts; an online softmax in registers. Same result as
// qie_attention (a row whose keys are all masked gets zeros), without re-reading K / V per row.
#define QT_ROWS 64
#define QT_KEYS 16

template <int MAXD, typename TQ, typename TK, typename TV, typename TO>
__device__ __forceinline__ void qie_attention_tiled(
    const TQ* q, const TK* k, const TV* v, const u8_t* mask, TO* o, int Sq, int Sk, int H, int D,
    int Dv, float scale, long long qb, long long qs, long long qh, long long qd, long long kb,
    long long ks, long long kh, long long kd, long long vb, long long vs, long long vh,
    long long vd, long long mb, long long ms) {
    __shared__ float qsh[QT_ROWS][MAXD + 1];
    __shared__ float ksh[QT_KEYS][MAXD + 1];
    __shared__ float vsh[QT_KEYS][MAXD + 1];
    __shared__ float keep[QT_KEYS];
    const int t = threadIdx.x, h = blockIdx.y;
    const int i0 = blockIdx.x * QT_ROWS, i = i0 + t;
    const long long bz = blockIdx.z;
    const int rows = min(QT_ROWS, Sq - i0);
    for (int idx = t; idx < rows * D; idx += QT_ROWS) {
        const int r = idx / D, d = idx - r * D;
        qsh[r][d] = to_f(q[bz * qb + (long long)(i0 + r) * qs + h * qh + d * qd]);
    }
    const TK* kbase = k + bz * kb + h * kh;
    const TV* vbase = v + bz * vb + h * vh;
    float acc[MAXD];
#pragma unroll
    for (int d = 0; d < MAXD; ++d) acc[d] = 0.0f;
    float mx = -QINF, l = 0.0f;
    for (int j0 = 0; j0 < Sk; j0 += QT_KEYS) {
        const int cnt = min(QT_KEYS, Sk - j0);
        __syncthreads();
        for (int idx = t; idx < cnt * D; idx += QT_ROWS) {
            const int j = idx / D, d = idx - j * D;
            ksh[j][d] = to_f(kbase[(long long)(j0 + j) * ks + d * kd]);
        }
        for (int idx = t; idx < cnt * Dv; idx += QT_ROWS) {
            const int j = idx / Dv, d = idx - j * Dv;
            vsh[j][d] = to_f(vbase[(long long)(j0 + j) * vs + d * vd]);
        }
        if (t < cnt) keep[t] = (mask && !mask[bz * mb + (long long)(j0 + t) * ms]) ? 0.0f : 1.0f;
        __syncthreads();
        if (i >= Sq) continue;
        float s[QT_KEYS];
        float tile_max = -QINF;
#pragma unroll
        for (int j = 0; j < QT_KEYS; ++j) {
            float dot = 0.0f;
            if (j < cnt) {
#pragma unroll 8
                for (int d = 0; d < D; ++d) dot += qsh[t][d] * ksh[j][d];
            }
            s[j] = (j < cnt && keep[j] != 0.0f) ? dot * scale : -QINF;
            tile_max = fmaxf(tile_max, s[j]);
        }
        if (tile_max == -QINF) continue;
        const float m_new = fmaxf(mx, tile_max);
        const float corr = expf(mx - m_new);  // 0 on the first live tile (mx = -inf)
        l *= corr;
#pragma unroll
        for (int d = 0; d < MAXD; ++d) acc[d] *= corr;
#pragma unroll
        for (int j = 0; j < QT_KEYS; ++j) {
            if (j < cnt && s[j] != -QINF) {  // rows past cnt hold the last tile's values
                const float p = expf(s[j] - m_new);
                l += p;
#pragma unroll
                for (int d = 0; d < MAXD; ++d)
                    if (d < Dv) acc[d] += p * vsh[j][d];
            }
        }
        mx = m_new;
    }
    if (i >= Sq) return;
    const float inv = (mx == -QINF || l == 0.0f) ? 0.0f : 1.0f / l;
    TO* orow = o + ((bz * Sq + i) * (long long)H + h) * Dv;
#pragma unroll
    for (int d = 0; d < MAXD; ++d)
        if (d < Dv) orow[d] = from_f<TO>(acc[d] * inv);
}

// Attention backward, generic: out dense [B, Sq + 2 Sk, H, D] = dq | dk | dv (D == Dv). With
// P = exp(s * scale - lse) and dS = P * (dO V^T - delta), delta = rowsum(dO * O):
// qie_attention_grad_q (one block per query row) runs the softmax pass for lse and delta, writes
// them to lse / delta ([B, H, Sq] f32), then dq = scale * dS K; qie_attention_grad_kv (one
// block per key row, after it) computes dk = scale * dS^T Q and dv = P^T dO.
template <typename TQ, typename TK, typename TV, typename TG, typename TO>
__device__ __forceinline__ void qie_attention_grad_q(
    const TQ* q, const TK* k, const TV* v, const TG* g, const u8_t* mask, TO* out, float* lse,
    float* delta, int Sq, int Sk, int H, int D, float scale, long long qb, long long qs,
    long long qh, long long qd, long long kb, long long ks, long long kh, long long kd,
    long long vb, long long vs, long long vh, long long vd, long long gb, long long gs,
    long long gh, long long gd, long long mb, long long ms) {
    __shared__ float qrow[QA_MAX_D];
    __shared__ float grow[QA_MAX_D];
    __shared__ float p[QA_THREADS];
    __shared__ float red[QA_THREADS / 32];
    const int Dv = D;
    const int i = blockIdx.x, h = blockIdx.y, t = threadIdx.x;
    const long long bz = blockIdx.z;
    for (int d = t; d < D; d += QA_THREADS) grow[d] = to_f(g[bz * gb + i * gs + h * gh + d * gd]);
    float acc[QA_MAX_D / QA_THREADS];
    float mx, l;
    qa_softmax_row(QA_ROW_ARGS, qrow, p, red, acc, mx, l);
    const bool empty = mx == -QINF || l == 0.0f;
    float dot = 0.0f;
#pragma unroll
    for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) {
        const int d = t + c * QA_THREADS;
        if (d < D) dot += acc[c] * grow[d];
    }
    dot = qa_block_reduce(dot, false, red);
    const float row_lse = empty ? QINF : mx + logf(l);
    const float row_delta = empty ? 0.0f : dot / l;
    if (t == 0) {
        lse[(bz * H + h) * Sq + i] = row_lse;
        delta[(bz * H + h) * Sq + i] = row_delta;
    }
    const TK* kbase = k + bz * kb + h * kh;
    const TV* vbase = v + bz * vb + h * vh;
#pragma unroll
    for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) acc[c] = 0.0f;
    for (int j0 = 0; j0 < Sk; j0 += QA_THREADS) {
        const int j = j0 + t;
        float ds = 0.0f;
        if (j < Sk && !empty && !(mask && !mask[bz * mb + j * ms])) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < D; ++d) {
                s += qrow[d] * to_f(kbase[j * ks + d * kd]);
                dp += grow[d] * to_f(vbase[j * vs + d * vd]);
            }
            ds = expf(s * scale - row_lse) * (dp - row_delta);
        }
        __syncthreads();
        p[t] = ds;
        __syncthreads();
        const int cnt = min(QA_THREADS, Sk - j0);
#pragma unroll
        for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) {
            const int d = t + c * QA_THREADS;
            if (d < D)
                for (int jj = 0; jj < cnt; ++jj)
                    acc[c] += p[jj] * to_f(kbase[(long long)(j0 + jj) * ks + d * kd]);
        }
    }
    TO* row = out + ((bz * (Sq + 2LL * Sk) + i) * H + h) * D;
#pragma unroll
    for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) {
        const int d = t + c * QA_THREADS;
        if (d < D) row[d] = from_f<TO>(acc[c] * scale);
    }
}

template <typename TQ, typename TK, typename TV, typename TG, typename TO>
__device__ __forceinline__ void qie_attention_grad_kv(
    const TQ* q, const TK* k, const TV* v, const TG* g, const u8_t* mask, TO* out,
    const float* lse, const float* delta, int Sq, int Sk, int H, int D, float scale,
    long long qb, long long qs, long long qh, long long qd, long long kb, long long ks,
    long long kh, long long kd, long long vb, long long vs, long long vh, long long vd,
    long long gb, long long gs, long long gh, long long gd, long long mb, long long ms) {
    __shared__ float krow[QA_MAX_D];
    __shared__ float vrow[QA_MAX_D];
    __shared__ float p[QA_THREADS];
    __shared__ float dsh[QA_THREADS];
    const int j = blockIdx.x, h = blockIdx.y, t = threadIdx.x;
    const long long bz = blockIdx.z;
    const bool keep = !(mask && !mask[bz * mb + j * ms]);
    for (int d = t; d < D; d += QA_THREADS) {
        krow[d] = to_f(k[bz * kb + j * ks + h * kh + d * kd]);
        vrow[d] = to_f(v[bz * vb + j * vs + h * vh + d * vd]);
    }
    __syncthreads();
    const TQ* qbase = q + bz * qb + h * qh;
    const TG* gbase = g + bz * gb + h * gh;
    const float* lrow = lse + (bz * H + h) * Sq;
    const float* drow = delta + (bz * H + h) * Sq;
    float acc_k[QA_MAX_D / QA_THREADS], acc_v[QA_MAX_D / QA_THREADS];
#pragma unroll
    for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) acc_k[c] = acc_v[c] = 0.0f;
    for (int i0 = 0; keep && i0 < Sq; i0 += QA_THREADS) {
        const int i = i0 + t;
        float pi = 0.0f, ds = 0.0f;
        if (i < Sq && lrow[i] != QINF) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < D; ++d) {
                s += krow[d] * to_f(qbase[i * qs + d * qd]);
                dp += vrow[d] * to_f(gbase[i * gs + d * gd]);
            }
            pi = expf(s * scale - lrow[i]);
            ds = pi * (dp - drow[i]);
        }
        __syncthreads();
        p[t] = pi;
        dsh[t] = ds;
        __syncthreads();
        const int cnt = min(QA_THREADS, Sq - i0);
#pragma unroll
        for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) {
            const int d = t + c * QA_THREADS;
            if (d < D)
                for (int ii = 0; ii < cnt; ++ii) {
                    const long long at = (long long)(i0 + ii);
                    acc_v[c] += p[ii] * to_f(gbase[at * gs + d * gd]);
                    acc_k[c] += dsh[ii] * to_f(qbase[at * qs + d * qd]);
                }
        }
    }
    TO* dk = out + ((bz * (Sq + 2LL * Sk) + Sq + j) * H + h) * D;
    TO* dv = dk + (long long)Sk * H * D;
#pragma unroll
    for (int c = 0; c < QA_MAX_D / QA_THREADS; ++c) {
        const int d = t + c * QA_THREADS;
        if (d < D) {
            dk[d] = from_f<TO>(acc_k[c] * scale);
            dv[d] = from_f<TO>(acc_v[c]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Direct 2D convolution, NCHW: o[n, oc, y, x] = sum_{c, ky, kx} x[n, g*Cg + c, ..] w[oc, c, ky, kx].
// Grid-stride over the output elements; o dense.

template <typename TX, typename TW, typename TO>
__device__ __forceinline__ void qie_conv2d(const TX* x, const TW* w, TO* o, int N, int C, int H,
                                           int W, int O, int KH, int KW, int OH, int OW, int sh,
                                           int sw, int ph, int pw, int dh, int dw, int groups,
                                           long long xn, long long xc, long long xh, long long xw,
                                           long long wo, long long wc, long long wh, long long ww) {
    const long long total = (long long)N * O * OH * OW;
    const int cg = C / groups, og = O / groups;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long t = idx;
        const int ox = t % OW; t /= OW;
        const int oy = t % OH; t /= OH;
        const int oc = t % O; t /= O;
        const int n = (int)t;
        const int g = oc / og;
        float acc = 0.0f;
        for (int c = 0; c < cg; ++c)
            for (int ky = 0; ky < KH; ++ky) {
                const int iy = oy * sh - ph + ky * dh;
                if (iy < 0 || iy >= H) continue;
                for (int kx = 0; kx < KW; ++kx) {
                    const int ix = ox * sw - pw + kx * dw;
                    if (ix < 0 || ix >= W) continue;
                    acc += to_f(x[n * xn + (g * cg + c) * xc + iy * xh + ix * xw]) *
                           to_f(w[oc * wo + c * wc + ky * wh + kx * ww]);
                }
            }
        o[idx] = from_f<TO>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// im2col for the conv fast path (im2col + cuBLASLt): col[k, r, ox] = x[c, iy, ix] for
// k = (c, ky, kx) = blockIdx.y and output row r0 + r, r = blockIdx.x; zero outside the input.
// col is dense [C * KH * KW, rows * OW], x is one image. When OW % 8 == 0 every thread writes 8
// outputs with one 16-byte store (the kernel is store-bound: col is 9x the input for 3x3).

__device__ __forceinline__ void qie_im2col_bf16(const bf16_t* x, bf16_t* col, int H, int W,
                                                int KH, int KW, int OW, int sh, int sw, int ph,
                                                int pw, int dh, int dw, int r0, int rows,
                                                long long xc, long long xh, long long xw) {
    const int k = blockIdx.y, r = blockIdx.x;
    const int kx = k % KW, ky = (k / KW) % KH, c = k / (KW * KH);
    const int iy = (r0 + r) * sh - ph + ky * dh;
    const bool row_in = iy >= 0 && iy < H;
    const unsigned short* src =
        reinterpret_cast<const unsigned short*>(x) + c * xc + (row_in ? iy * xh : 0);
    unsigned short* dst =
        reinterpret_cast<unsigned short*>(col) + ((long long)k * rows + r) * OW;
    const int ix0 = kx * dw - pw;
    if ((OW & 7) == 0) {
        for (int ox = threadIdx.x * 8; ox < OW; ox += blockDim.x * 8) {
            __align__(16) unsigned short v[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int ix = (ox + j) * sw + ix0;
                v[j] = (row_in && ix >= 0 && ix < W) ? src[ix * xw] : (unsigned short)0;
            }
            *reinterpret_cast<uint4*>(dst + ox) = *reinterpret_cast<const uint4*>(v);
        }
    } else {
        for (int ox = threadIdx.x; ox < OW; ox += blockDim.x) {
            const int ix = ox * sw + ix0;
            dst[ox] = (row_in && ix >= 0 && ix < W) ? src[ix * xw] : (unsigned short)0;
        }
    }
}
