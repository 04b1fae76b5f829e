// Flash-attention backward for bf16 q/k/v/dO, f32 accumulators. Compiled in one program after
// flash_attention.cu, whose helpers (cp.async, ldmatrix, mma_bf16, pack_bf16x2, fast_exp2, the
// 16-byte XOR swizzle) it uses.
//
// Inputs as in the forward ([B, S, H, D] views, innermost dim contiguous, other strides
// multiples of 8 elements; key mask [B, Sk] u8), plus lse [B, H, Sq] from the forward (natural
// log of the softmax denominator of the scaled scores, +inf for fully masked rows) and
// delta [B, H, Sq] = rowsum(dO * O) from `flash_attn_bwd_delta`. With P = exp(s * scale - lse)
// and dS = P * (dO V^T - delta):
//   dQ = scale * dS K        (flash_attn_bwd_dq_*: one block per 64 query rows, loop over keys)
//   dK = scale * dS^T Q,     (flash_attn_bwd_dkdv_*: one block per 64 key rows, loop over
//   dV = P^T dO               queries; S^T = K Q^T is computed directly so P^T and dS^T are
//                             A operands from registers)
// Two kernels instead of FlashAttention-2's one with atomic dQ updates: each output element has
// one writer (deterministic), at the price of computing S and dP twice.
//
// Each warp owns 16 rows (one m16 tile); tiles of 64 columns are double buffered through
// cp.async. Every MMA is one of the forward's two patterns: A from shared memory or registers,
// B either "rows are n" (like K in Q K^T) or "rows are k" (ldmatrix.trans, like V in P V).

#define FB_WARPS 4
#define FB_BM 64 // rows per block: 16 per warp
#define FB_BN 64 // columns per tile
#define FB_THREADS (32 * FB_WARPS)
#define FB_LOG2E 1.4426950408889634f

// One thread per row: delta[b, h, i] = sum_c dO[b, i, h, c] * O[b, i, h, c] (f32); delta is
// [B, H, Sq], so the row index is its offset.
extern "C" __global__ void flash_attn_bwd_delta(const bf16_t* __restrict__ o,
                                                const bf16_t* __restrict__ dout,
                                                float* __restrict__ delta, int batch, int sq,
                                                int heads, int d, i64_t o_sb, i64_t o_ss,
                                                i64_t o_sh, i64_t g_sb, i64_t g_ss, i64_t g_sh) {
    const i64_t row = (i64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (i64_t)batch * heads * sq) return;
    const int i = (int)(row % sq);
    const int h = (int)((row / sq) % heads);
    const i64_t b = row / ((i64_t)sq * heads);
    const bf16_t* orow = o + b * o_sb + i * o_ss + h * o_sh;
    const bf16_t* grow = dout + b * g_sb + i * g_ss + h * g_sh;
    float acc = 0.f;
    for (int c = 0; c < d; c += 8) {
        const uint4 ov = *(const uint4*)(orow + c);
        const uint4 gv = *(const uint4*)(grow + c);
        const u32_t ow[4] = {ov.x, ov.y, ov.z, ov.w};
        const u32_t gw[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            acc = fmaf(__uint_as_float(ow[e] << 16), __uint_as_float(gw[e] << 16), acc);
            acc = fmaf(__uint_as_float(ow[e] & 0xffff0000u), __uint_as_float(gw[e] & 0xffff0000u),
                       acc);
        }
    }
    delta[row] = acc;
}

// Copies rows [r0, r0 + ROWS) of a [rows, D] tile (row stride `ss` elements) into swizzled
// shared memory at `dst` through cp.async; rows at or past `limit` are zero-filled.
template <int D, int ROWS>
__device__ __forceinline__ void fb_load_tile(u32_t dst, const bf16_t* base, i64_t ss, int r0,
                                             int limit) {
    constexpr int CH = D / 8;
    constexpr int RS = FB_THREADS / CH;
    const int tid = threadIdx.x;
    const int lr = tid / CH, lc = tid % CH;
    const u32_t lsm = swz<CH>(lr, lc);
    const bf16_t* src = base + (i64_t)(r0 + lr) * ss + lc * 8;
#pragma unroll
    for (int i = 0; i < ROWS / RS; ++i) {
        const bool ok = r0 + lr + i * RS < limit;
        cp_async_16(dst + lsm + i * RS * CH * 16, ok ? src + (i64_t)i * RS * ss : base, ok);
    }
}

// acc[NT][4] += A(16 x D, rows row0.. of the swizzled tile at sA) * B^T where B is the swizzled
// [64, D] tile at sB ("rows are n": like K in S = Q K^T).
template <int D>
__device__ __forceinline__ void fb_mma_abt(float (*acc)[4], u32_t sA, int row0, u32_t sB) {
    constexpr int CH = D / 8;
    const int lane = threadIdx.x & 31;
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int lchunk_hi = lane >> 4;
    const int krow = (lane & 7) + (lane >> 4) * 8;
    const int kchunk = (lane >> 3) & 1;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        u32_t a[4];
        ldmatrix_x4(sA + swz<CH>(row0 + lrow, ks * 2 + lchunk_hi), a[0], a[1], a[2], a[3]);
#pragma unroll
        for (int np = 0; np < FB_BN / 16; ++np) {
            u32_t b0, b1, b2, b3;
            ldmatrix_x4(sB + swz<CH>(np * 16 + krow, ks * 2 + kchunk), b0, b1, b2, b3);
            mma_bf16(acc[2 * np], a, b0, b1);
            mma_bf16(acc[2 * np + 1], a, b2, b3);
        }
    }
}

// out[D/8][4] += P(16 x 64, the accumulator tiles `p` as bf16 A operands) * B where B is the
// swizzled [64, D] tile at sB ("rows are k": ldmatrix.trans, like V in O += P V).
template <int D>
__device__ __forceinline__ void fb_mma_pb(float (*out)[4], float (*p)[4], u32_t sB) {
    constexpr int CH = D / 8;
    const int lane = threadIdx.x & 31;
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int lchunk_hi = lane >> 4;
#pragma unroll
    for (int kk = 0; kk < FB_BN / 16; ++kk) {
        u32_t a[4];
        a[0] = pack_bf16x2(p[2 * kk][0], p[2 * kk][1]);
        a[1] = pack_bf16x2(p[2 * kk][2], p[2 * kk][3]);
        a[2] = pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[3] = pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            u32_t b0, b1, b2, b3;
            ldmatrix_x4_trans(sB + swz<CH>(kk * 16 + lrow, dp * 2 + lchunk_hi), b0, b1, b2, b3);
            mma_bf16(out[2 * dp], a, b0, b1);
            mma_bf16(out[2 * dp + 1], a, b2, b3);
        }
    }
}

// Writes this warp's 16 x D accumulator rows (times `mul`) as bf16 to rows row0.. of `dst`
// (row stride `ss`), skipping rows at or past `limit`.
template <int D>
__device__ __forceinline__ void fb_store_rows(bf16_t* dst, i64_t ss, int row0, int limit,
                                              float (*acc)[4], float mul) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int r = row0 + (lane >> 2) + hf * 8;
        if (r >= limit) continue;
        bf16_t* row = dst + (i64_t)r * ss + 2 * (lane & 3);
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
            *(u32_t*)(row + j * 8) = pack_bf16x2(acc[j][2 * hf] * mul, acc[j][2 * hf + 1] * mul);
    }
}

template <int D> __device__ __forceinline__ void fb_zero(float (*acc)[4]) {
#pragma unroll
    for (int j = 0; j < D; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
}

#define FB_ARGS                                                                                   \
    const bf16_t *__restrict__ q, const bf16_t *__restrict__ k, const bf16_t *__restrict__ v,    \
        const bf16_t *__restrict__ dout, const u8_t *__restrict__ mask,                           \
        const float *__restrict__ lse, const float *__restrict__ delta, bf16_t *__restrict__ dq,  \
        bf16_t *__restrict__ dk, bf16_t *__restrict__ dv, int sq, int sk, int heads, i64_t q_sb, \
        i64_t q_ss, i64_t q_sh, i64_t k_sb, i64_t k_ss, i64_t k_sh, i64_t v_sb, i64_t v_ss,      \
        i64_t v_sh, i64_t g_sb, i64_t g_ss, i64_t g_sh, i64_t d_sb, i64_t d_ss, i64_t d_sh,      \
        i64_t mask_sb, float scale_log2, float scale
#define FB_PASS                                                                                   \
    q, k, v, dout, mask, lse, delta, dq, dk, dv, sq, sk, heads, q_sb, q_ss, q_sh, k_sb, k_ss,    \
        k_sh, v_sb, v_ss, v_sh, g_sb, g_ss, g_sh, d_sb, d_ss, d_sh, mask_sb, scale_log2, scale

// dQ for 64 query rows of one (batch, head). Outputs dq/dk/dv share the strides d_*.
template <int D> __device__ __forceinline__ void flash_bwd_dq(FB_ARGS) {
    constexpr int NT = FB_BN / 8;
    constexpr int ROW_BYTES = FB_BM * D * 2;
    constexpr int TILE_BYTES = FB_BN * D * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    const u32_t sQ = smem_u32(smem);
    const u32_t sG = sQ + ROW_BYTES;
    const u32_t sK = sG + ROW_BYTES;             // 2 buffers
    const u32_t sV = sK + 2 * TILE_BYTES;        // 2 buffers
    float* sBias = (float*)(smem + 2 * ROW_BYTES + 4 * TILE_BYTES); // 2 x FB_BN

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int q0 = blockIdx.x * FB_BM, h = blockIdx.y, b = blockIdx.z;
    const bf16_t* qb = q + b * q_sb + h * q_sh;
    const bf16_t* gb = dout + b * g_sb + h * g_sh;
    const bf16_t* kb = k + b * k_sb + h * k_sh;
    const bf16_t* vb = v + b * v_sb + h * v_sh;
    const u8_t* mb = mask ? mask + b * mask_sb : nullptr;

    fb_load_tile<D, FB_BM>(sQ, qb, q_ss, q0, sq);
    fb_load_tile<D, FB_BM>(sG, gb, g_ss, q0, sq);
    const int n_tiles = (sk + FB_BN - 1) / FB_BN;
    auto stage = [&](int t, int buf) {
        fb_load_tile<D, FB_BN>(sK + buf * TILE_BYTES, kb, k_ss, t * FB_BN, sk);
        fb_load_tile<D, FB_BN>(sV + buf * TILE_BYTES, vb, v_ss, t * FB_BN, sk);
        if (tid < FB_BN) {
            const int j = t * FB_BN + tid;
            const bool keep = j < sk && (mb == nullptr || mb[j] != 0);
            sBias[buf * FB_BN + tid] = keep ? 0.f : -INFINITY;
        }
    };
    stage(0, 0);
    cp_async_commit();

    // This thread's rows (lane/4 and lane/4 + 8 of the warp's 16): lse in the log2 domain, delta.
    float lse2[2], dl[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int i = q0 + warp * 16 + (lane >> 2) + hf * 8;
        const i64_t at = ((i64_t)b * heads + h) * sq + i;
        lse2[hf] = i < sq ? lse[at] * FB_LOG2E : INFINITY;
        dl[hf] = i < sq ? delta[at] : 0.f;
    }
    float acc[D / 8][4];
    fb_zero<D / 8>(acc);
    for (int t = 0; t < n_tiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < n_tiles) stage(t + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        float s[NT][4], dp[NT][4];
        fb_zero<NT>(s);
        fb_zero<NT>(dp);
        fb_mma_abt<D>(s, sQ, warp * 16, sK + buf * TILE_BYTES);
        fb_mma_abt<D>(dp, sG, warp * 16, sV + buf * TILE_BYTES);
        const float* bias = sBias + buf * FB_BN;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const float2 bc = *(const float2*)(bias + j * 8 + 2 * (lane & 3));
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p =
                    fast_exp2(fmaf(s[j][e], scale_log2, (e & 1 ? bc.y : bc.x) - lse2[e >> 1]));
                s[j][e] = p * (dp[j][e] - dl[e >> 1]);
            }
        }
        fb_mma_pb<D>(acc, s, sK + buf * TILE_BYTES);
        __syncthreads(); // buffer `buf` is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();
    fb_store_rows<D>(dq + b * d_sb + h * d_sh, d_ss, q0 + warp * 16, sq, acc, scale);
}

// dK and dV for 64 key rows of one (batch, head).
template <int D> __device__ __forceinline__ void flash_bwd_dkdv(FB_ARGS) {
    constexpr int NT = FB_BN / 8;
    constexpr int ROW_BYTES = FB_BM * D * 2;
    constexpr int TILE_BYTES = FB_BN * D * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    const u32_t sK = smem_u32(smem);
    const u32_t sV = sK + ROW_BYTES;
    const u32_t sQ = sV + ROW_BYTES;             // 2 buffers
    const u32_t sG = sQ + 2 * TILE_BYTES;        // 2 buffers
    float* sL = (float*)(smem + 2 * ROW_BYTES + 4 * TILE_BYTES); // 2 x FB_BN lse (log2 domain)
    float* sD = sL + 2 * FB_BN;                                  // 2 x FB_BN delta

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int k0 = blockIdx.x * FB_BM, h = blockIdx.y, b = blockIdx.z;
    const bf16_t* qb = q + b * q_sb + h * q_sh;
    const bf16_t* gb = dout + b * g_sb + h * g_sh;
    const bf16_t* kb = k + b * k_sb + h * k_sh;
    const bf16_t* vb = v + b * v_sb + h * v_sh;
    const float* lb = lse + ((i64_t)b * heads + h) * sq;
    const float* db = delta + ((i64_t)b * heads + h) * sq;

    fb_load_tile<D, FB_BM>(sK, kb, k_ss, k0, sk);
    fb_load_tile<D, FB_BM>(sV, vb, v_ss, k0, sk);
    const int n_tiles = (sq + FB_BN - 1) / FB_BN;
    auto stage = [&](int t, int buf) {
        fb_load_tile<D, FB_BN>(sQ + buf * TILE_BYTES, qb, q_ss, t * FB_BN, sq);
        fb_load_tile<D, FB_BN>(sG + buf * TILE_BYTES, gb, g_ss, t * FB_BN, sq);
        if (tid < FB_BN) {
            const int i = t * FB_BN + tid;
            sL[buf * FB_BN + tid] = i < sq ? lb[i] * FB_LOG2E : INFINITY;
            sD[buf * FB_BN + tid] = i < sq ? db[i] : 0.f;
        }
    };
    stage(0, 0);
    cp_async_commit();

    // This thread's key rows: masked or out-of-range keys get P = 0 (and are not written).
    float keep[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int j = k0 + warp * 16 + (lane >> 2) + hf * 8;
        keep[hf] = (j < sk && (mask == nullptr || mask[b * mask_sb + j] != 0)) ? 0.f : -INFINITY;
    }
    float acc_k[D / 8][4], acc_v[D / 8][4];
    fb_zero<D / 8>(acc_k);
    fb_zero<D / 8>(acc_v);
    for (int t = 0; t < n_tiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < n_tiles) stage(t + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const u32_t tq = sQ + buf * TILE_BYTES, tg = sG + buf * TILE_BYTES;
        const float* l2 = sL + buf * FB_BN;
        const float* dd = sD + buf * FB_BN;
        float s[NT][4];
        fb_zero<NT>(s);
        fb_mma_abt<D>(s, sK, warp * 16, tq); // S^T = K Q^T
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const int c = j * 8 + 2 * (lane & 3);
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[j][e] = fast_exp2(fmaf(s[j][e], scale_log2, keep[e >> 1] - l2[c + (e & 1)]));
        }
        fb_mma_pb<D>(acc_v, s, tg); // dV += P^T dO
        float dp[NT][4];
        fb_zero<NT>(dp);
        fb_mma_abt<D>(dp, sV, warp * 16, tg); // dP^T = V dO^T
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const int c = j * 8 + 2 * (lane & 3);
#pragma unroll
            for (int e = 0; e < 4; ++e) dp[j][e] = s[j][e] * (dp[j][e] - dd[c + (e & 1)]);
        }
        fb_mma_pb<D>(acc_k, dp, tq); // dK += dS^T Q
        __syncthreads();
    }
    cp_async_wait<0>();
    fb_store_rows<D>(dk + b * d_sb + h * d_sh, d_ss, k0 + warp * 16, sk, acc_k, scale);
    fb_store_rows<D>(dv + b * d_sb + h * d_sh, d_ss, k0 + warp * 16, sk, acc_v, 1.f);
}

extern "C" __global__ void __launch_bounds__(FB_THREADS, 2) flash_attn_bwd_dq_d128(FB_ARGS) {
    flash_bwd_dq<128>(FB_PASS);
}
extern "C" __global__ void __launch_bounds__(FB_THREADS, 2) flash_attn_bwd_dq_d64(FB_ARGS) {
    flash_bwd_dq<64>(FB_PASS);
}
extern "C" __global__ void __launch_bounds__(FB_THREADS, 2) flash_attn_bwd_dkdv_d128(FB_ARGS) {
    flash_bwd_dkdv<128>(FB_PASS);
}
extern "C" __global__ void __launch_bounds__(FB_THREADS, 2) flash_attn_bwd_dkdv_d64(FB_ARGS) {
    flash_bwd_dkdv<64>(FB_PASS);
}
