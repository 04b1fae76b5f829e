// Flash-attention backward for Hopper (sm_90a) on wgmma, head_dim 128. Compiled in one program
// after flash_attention_wgmma.cu, whose helpers (cp_async_16, smem_desc, wgmma_rs, the wgmma
// fences, pack_bf16x2, fast_exp2) it uses. Same arguments and results as the dQ and dK/dV
// kernels of flash_attention_bwd.cu (delta still comes from its flash_attn_bwd_delta):
//   dQ = scale * dS K              (flash_attn_wgmma_bwd_dq_d128: 64 query rows a block)
//   dK = scale * dS^T Q, dV = P^T dO (flash_attn_wgmma_bwd_dkdv_d128: 64 key rows a block)
// with P = exp(s * scale - lse) and dS = P * (dO V^T - delta). Each output element has one
// writer (deterministic); S and dP are computed in both kernels.
//
// One block = WGS warpgroups (FW_DQ_WGS / FW_DKDV_WGS, set by the host), each owning 64 rows;
// tiles of 64 columns are double buffered through cp.async issued by every thread and shared
// by the block's warpgroups (fewer column reads through L2). Measured on an H200 (cuda_bench
// --only attn_bwd): 3 warpgroups for dQ (~156 registers) and 1 for dK/dV (~230; 2 are no
// faster) is the best. Four products per tile, each one of the forward's two patterns:
//   A B^T with A and B from shared memory, both K-major (m64n64k16: S = Q K^T, dP = dO V^T,
//     S^T = K Q^T, dP^T = V dO^T);
//   X += P B with P (bf16) from registers and B from shared memory, MN-major (m64n128k16:
//     dQ += dS K, dV += P^T dO, dK += dS^T Q). The accumulator layout of the first is the
//     A-fragment layout of the second, so P and dS never leave registers.
//
// Shared-memory tiles are [2 halves of 64 columns][rows][128 B], 16-byte chunk c of row r at
// chunk (c ^ (r & 7)): the 128-byte swizzle, as in the forward.

#ifndef FW_DQ_WGS
#define FW_DQ_WGS 3 // warpgroups (of 64 rows) per dQ block
#endif
#ifndef FW_DKDV_WGS
#define FW_DKDV_WGS 1 // warpgroups (of 64 rows) per dK/dV block
#endif
#define FW_ROWS 64                      // rows per warpgroup and columns per tile
#define FW_TILE (FW_ROWS * FA3_D * 2)   // one [64, 128] column tile: 16 KB
#define FW_HALF (FW_ROWS * 128)         // 64 columns of 64 rows: 8 KB
#define FW_LOG2E 1.4426950408889634f

// Shared-memory map of a block of WGS warpgroups (bytes from a 1024-aligned base): two row
// tiles [64 WGS, 128], two double-buffered column tiles, then f32 [2][2][64] vectors (per-tile
// bias, or lse and delta).
template <int WGS> struct FwMap {
    static constexpr int ROW_TILE = WGS * FW_ROWS * FA3_D * 2;
    static constexpr int ROW_HALF = WGS * FW_ROWS * 128;
    static constexpr int COL0 = 2 * ROW_TILE; // + buf * FW_TILE
    static constexpr int COL1 = COL0 + 2 * FW_TILE;
    static constexpr int VEC = COL1 + 2 * FW_TILE;
};

#define FW_D32_LIST                                                                               \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FW_D32_OPS(d)                                                                             \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),           \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),   \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),             \
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),             \
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// d (+)= A B for a 64x64x16 tile: A and B from shared memory, both K-major.
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], u64_t da, u64_t db, int accumulate) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FW_D32_LIST
                 ", %32, %33, p, 1, 1, 0, 0;\n"
                 "}\n"
                 : FW_D32_OPS(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}

__device__ __forceinline__ void fence_regs32(float (&d)[32]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void fence_regs16(u32_t (&a)[16]) {
#pragma unroll
    for (int i = 0; i < 16; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// s = A B^T for 64 rows of A (a tile whose 64-column halves are a_half bytes apart) and the
// [64, 128] column tile B (the 8 k16 steps of the head dim).
__device__ __forceinline__ void fw_gemm_abt(float (&s)[32], u32_t a, u32_t a_half, u32_t b) {
#pragma unroll
    for (int k = 0; k < FA3_D / 16; ++k) {
        const u32_t ka = (k / 4) * a_half + (k % 4) * 32;
        const u32_t kb = (k / 4) * FW_HALF + (k % 4) * 32;
        wgmma_ss_n64(s, smem_desc(a + ka, 16, 1024), smem_desc(b + kb, 16, 1024), k > 0);
    }
}

// o += P B for P [64, 64] (bf16x2, 4 registers a k16 step) and the [64, 128] tile B.
__device__ __forceinline__ void fw_gemm_pb(float (&o)[64], const u32_t (&p)[16], u32_t b) {
#pragma unroll
    for (int k = 0; k < FW_ROWS / 16; ++k)
        wgmma_rs(o, p[4 * k], p[4 * k + 1], p[4 * k + 2], p[4 * k + 3],
                 smem_desc(b + k * 16 * 128, FW_HALF, 1024));
}

__device__ __forceinline__ void fw_pack(const float (&s)[32], u32_t (&p)[16]) {
#pragma unroll
    for (int i = 0; i < 16; ++i) p[i] = pack_bf16x2(s[2 * i], s[2 * i + 1]);
}

// Copies rows [r0, r0 + ROWS) of a [*, 128] matrix (row stride ld) into the swizzled tile at
// dst; rows at or past `limit` are zero-filled. Thread copies chunk lc of rows lr, lr + RS, ...
// below ROWS (RS = THREADS / 16, a multiple of 8, so every one of those rows has the same
// swizzle; ROWS need not be a multiple of RS: 384 threads load 64-row tiles too).
template <int ROWS, int THREADS>
__device__ __forceinline__ void fw_load_tile(u32_t dst, const bf16_t* base, i64_t ld, int r0,
                                             int limit) {
    constexpr int RS = THREADS / 16;
    const int tid = threadIdx.x;
    const int lr = tid >> 4, lc = tid & 15;
    dst += (lc >> 3) * (ROWS * 128) + lr * 128 + (((lc & 7) ^ (lr & 7)) << 4);
    const bf16_t* p = base + (i64_t)(r0 + lr) * ld + lc * 8;
#pragma unroll
    for (int i = 0; i < (ROWS + RS - 1) / RS; ++i) {
        if (ROWS % RS != 0 && lr + RS * i >= ROWS) break;
        const bool ok = r0 + lr + RS * i < limit;
        cp_async_16(dst + i * RS * 128, ok ? p + (i64_t)i * RS * ld : base, ok);
    }
}

// Waits for this thread's copies but the newest group, then makes every thread's copies
// visible to the tensor cores (async proxy).
__device__ __forceinline__ void fw_tile_ready() {
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Writes a warpgroup's 64 x 128 accumulator rows (times `mul`) as bf16 to rows row0.. of dst
// (row stride ss), skipping rows at or past `limit`.
__device__ __forceinline__ void fw_store_rows(bf16_t* dst, i64_t ss, int row0, int limit,
                                              const float (&acc)[64], float mul) {
    const int warp = (threadIdx.x & 127) >> 5, lane = threadIdx.x & 31, quad = lane & 3;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int r = row0 + warp * 16 + (lane >> 2) + hf * 8;
        if (r >= limit) continue;
        bf16_t* row = dst + (i64_t)r * ss + 2 * quad;
#pragma unroll
        for (int j = 0; j < 16; ++j)
            *(u32_t*)(row + 8 * j) =
                pack_bf16x2(acc[4 * j + 2 * hf] * mul, acc[4 * j + 2 * hf + 1] * mul);
    }
}

#define FW_ARGS                                                                                   \
    const bf16_t *__restrict__ q, const bf16_t *__restrict__ k, const bf16_t *__restrict__ v,    \
        const bf16_t *__restrict__ dout, const u8_t *__restrict__ mask,                           \
        const float *__restrict__ lse, const float *__restrict__ delta, bf16_t *__restrict__ dq,  \
        bf16_t *__restrict__ dk, bf16_t *__restrict__ dv, int sq, int sk, int heads, i64_t q_sb, \
        i64_t q_ss, i64_t q_sh, i64_t k_sb, i64_t k_ss, i64_t k_sh, i64_t v_sb, i64_t v_ss,      \
        i64_t v_sh, i64_t g_sb, i64_t g_ss, i64_t g_sh, i64_t d_sb, i64_t d_ss, i64_t d_sh,      \
        i64_t mask_sb, float scale_log2, float scale
#define FW_PASS                                                                                   \
    q, k, v, dout, mask, lse, delta, dq, dk, dv, sq, sk, heads, q_sb, q_ss, q_sh, k_sb, k_ss,    \
        k_sh, v_sb, v_ss, v_sh, g_sb, g_ss, g_sh, d_sb, d_ss, d_sh, mask_sb, scale_log2, scale

// dQ for 64 WGS query rows of one (batch, head). Shared memory: Q, dO, 2 K, 2 V tiles, 2 bias
// rows.
template <int WGS> __device__ __forceinline__ void flash_wgmma_bwd_dq(FW_ARGS) {
    using M = FwMap<WGS>;
    constexpr int THREADS = 128 * WGS;
    extern __shared__ __align__(1024) unsigned char fw_smem[];
    const u32_t raw_u = smem_u32(fw_smem);
    const u32_t base = (raw_u + 1023u) & ~1023u;
    float* sBias = (float*)(fw_smem + (base - raw_u) + M::VEC);
    const u32_t sQ = base, sG = base + M::ROW_TILE;
    const u32_t sK = base + M::COL0, sV = base + M::COL1; // 2 buffers each

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid & 127) >> 5, lane = tid & 31;
    const int quad = lane & 3;
    const int q0 = blockIdx.x * FW_ROWS * WGS, h = blockIdx.y, b = blockIdx.z;
    const int w0 = q0 + wg * FW_ROWS; // this warpgroup's first row
    const bf16_t* kb = k + b * k_sb + h * k_sh;
    const bf16_t* vb = v + b * v_sb + h * v_sh;
    const u8_t* mb = mask ? mask + b * mask_sb : nullptr;

    fw_load_tile<FW_ROWS * WGS, THREADS>(sQ, q + b * q_sb + h * q_sh, q_ss, q0, sq);
    fw_load_tile<FW_ROWS * WGS, THREADS>(sG, dout + b * g_sb + h * g_sh, g_ss, q0, sq);
    const int n_tiles = (sk + FW_ROWS - 1) / FW_ROWS;
    auto stage = [&](int t, int buf) {
        fw_load_tile<FW_ROWS, THREADS>(sK + buf * FW_TILE, kb, k_ss, t * FW_ROWS, sk);
        fw_load_tile<FW_ROWS, THREADS>(sV + buf * FW_TILE, vb, v_ss, t * FW_ROWS, sk);
        if (tid < FW_ROWS) {
            const int j = t * FW_ROWS + tid;
            const bool keep = j < sk && (mb == nullptr || mb[j] != 0);
            sBias[buf * FW_ROWS + tid] = keep ? 0.f : -INFINITY;
        }
    };
    stage(0, 0);
    asm volatile("cp.async.commit_group;\n" ::: "memory");

    // This thread's rows (16 warp + lane/4, + 8): lse in the log2 domain, delta.
    float lse2[2], dl[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int i = w0 + warp * 16 + (lane >> 2) + hf * 8;
        const i64_t at = ((i64_t)b * heads + h) * sq + i;
        lse2[hf] = i < sq ? lse[at] * FW_LOG2E : INFINITY;
        dl[hf] = i < sq ? delta[at] : 0.f;
    }
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    for (int t = 0; t < n_tiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < n_tiles) stage(t + 1, buf ^ 1);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        fw_tile_ready();
        const u32_t tk = sK + buf * FW_TILE, tv = sV + buf * FW_TILE;
        float s[32], dp[32];
        wgmma_fence();
        const u32_t own = wg * FW_ROWS * 128; // this warpgroup's rows of Q and dO
        fw_gemm_abt(s, sQ + own, M::ROW_HALF, tk);  // S = Q K^T
        fw_gemm_abt(dp, sG + own, M::ROW_HALF, tv); // dP = dO V^T
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs32(s);
        fence_regs32(dp);
        const float* bias = sBias + buf * FW_ROWS;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float2 bc = *(const float2*)(bias + j * 8 + 2 * quad);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = fast_exp2(
                    fmaf(s[4 * j + e], scale_log2, (e & 1 ? bc.y : bc.x) - lse2[e >> 1]));
                s[4 * j + e] = p * (dp[4 * j + e] - dl[e >> 1]);
            }
        }
        u32_t ds[16];
        fw_pack(s, ds);
        wgmma_fence();
        fw_gemm_pb(acc, ds, tk); // dQ += dS K
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(acc);
        fence_regs16(ds);
        __syncthreads(); // buffer `buf` is refilled by the next iteration's prefetch
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    fw_store_rows(dq + b * d_sb + h * d_sh, d_ss, w0, sq, acc, scale);
}

// dK and dV for 64 WGS key rows of one (batch, head). Shared memory: K, V, 2 Q, 2 dO tiles,
// and the lse (log2 domain) and delta of each query tile.
template <int WGS> __device__ __forceinline__ void flash_wgmma_bwd_dkdv(FW_ARGS) {
    using M = FwMap<WGS>;
    constexpr int THREADS = 128 * WGS;
    extern __shared__ __align__(1024) unsigned char fw_smem[];
    const u32_t raw_u = smem_u32(fw_smem);
    const u32_t base = (raw_u + 1023u) & ~1023u;
    float* sL = (float*)(fw_smem + (base - raw_u) + M::VEC); // [2][64]
    float* sD = sL + 2 * FW_ROWS;                              // [2][64]
    const u32_t sK = base, sV = base + M::ROW_TILE;
    const u32_t sQ = base + M::COL0, sG = base + M::COL1; // 2 buffers each

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid & 127) >> 5, lane = tid & 31;
    const int quad = lane & 3;
    const int k0 = blockIdx.x * FW_ROWS * WGS, h = blockIdx.y, b = blockIdx.z;
    const int w0 = k0 + wg * FW_ROWS; // this warpgroup's first row
    const bf16_t* qb = q + b * q_sb + h * q_sh;
    const bf16_t* gb = dout + b * g_sb + h * g_sh;
    const float* lb = lse + ((i64_t)b * heads + h) * sq;
    const float* db = delta + ((i64_t)b * heads + h) * sq;

    fw_load_tile<FW_ROWS * WGS, THREADS>(sK, k + b * k_sb + h * k_sh, k_ss, k0, sk);
    fw_load_tile<FW_ROWS * WGS, THREADS>(sV, v + b * v_sb + h * v_sh, v_ss, k0, sk);
    const int n_tiles = (sq + FW_ROWS - 1) / FW_ROWS;
    auto stage = [&](int t, int buf) {
        fw_load_tile<FW_ROWS, THREADS>(sQ + buf * FW_TILE, qb, q_ss, t * FW_ROWS, sq);
        fw_load_tile<FW_ROWS, THREADS>(sG + buf * FW_TILE, gb, g_ss, t * FW_ROWS, sq);
        if (tid < FW_ROWS) {
            const int i = t * FW_ROWS + tid;
            sL[buf * FW_ROWS + tid] = i < sq ? lb[i] * FW_LOG2E : INFINITY;
            sD[buf * FW_ROWS + tid] = i < sq ? db[i] : 0.f;
        }
    };
    stage(0, 0);
    asm volatile("cp.async.commit_group;\n" ::: "memory");

    // This thread's key rows: masked or out-of-range keys get P = 0 (and are not written).
    float keep[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int j = w0 + warp * 16 + (lane >> 2) + hf * 8;
        keep[hf] = (j < sk && (mask == nullptr || mask[b * mask_sb + j] != 0)) ? 0.f : -INFINITY;
    }
    float acc_k[64], acc_v[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc_k[i] = acc_v[i] = 0.f;
    for (int t = 0; t < n_tiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < n_tiles) stage(t + 1, buf ^ 1);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        fw_tile_ready();
        const u32_t tq = sQ + buf * FW_TILE, tg = sG + buf * FW_TILE;
        float s[32], dp[32];
        wgmma_fence();
        const u32_t own = wg * FW_ROWS * 128; // this warpgroup's rows of K and V
        fw_gemm_abt(s, sK + own, M::ROW_HALF, tq);  // S^T = K Q^T
        fw_gemm_abt(dp, sV + own, M::ROW_HALF, tg); // dP^T = V dO^T
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs32(s);
        fence_regs32(dp);
        const float* l2 = sL + buf * FW_ROWS;
        const float* dd = sD + buf * FW_ROWS;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int c = j * 8 + 2 * quad;
            const float2 lc = *(const float2*)(l2 + c);
            const float2 dc = *(const float2*)(dd + c);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = fast_exp2(
                    fmaf(s[4 * j + e], scale_log2, keep[e >> 1] - (e & 1 ? lc.y : lc.x)));
                s[4 * j + e] = p;
                dp[4 * j + e] = p * (dp[4 * j + e] - (e & 1 ? dc.y : dc.x));
            }
        }
        u32_t pt[16], dst[16];
        fw_pack(s, pt);
        fw_pack(dp, dst);
        wgmma_fence();
        fw_gemm_pb(acc_v, pt, tg);  // dV += P^T dO
        fw_gemm_pb(acc_k, dst, tq); // dK += dS^T Q
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(acc_v);
        fence_regs(acc_k);
        fence_regs16(pt);
        fence_regs16(dst);
        __syncthreads(); // buffer `buf` is refilled by the next iteration's prefetch
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    fw_store_rows(dk + b * d_sb + h * d_sh, d_ss, w0, sk, acc_k, scale);
    fw_store_rows(dv + b * d_sb + h * d_sh, d_ss, w0, sk, acc_v, 1.f);
}

extern "C" __global__ void __launch_bounds__(128 * FW_DQ_WGS, 1)
    flash_attn_wgmma_bwd_dq_d128(FW_ARGS) {
    flash_wgmma_bwd_dq<FW_DQ_WGS>(FW_PASS);
}
extern "C" __global__ void __launch_bounds__(128 * FW_DKDV_WGS, 1)
    flash_attn_wgmma_bwd_dkdv_d128(FW_ARGS) {
    flash_wgmma_bwd_dkdv<FW_DKDV_WGS>(FW_PASS);
}
