// Flash-attention forward for Hopper (sm_90a): wgmma tensor cores, warp specialisation
// (FlashAttention-3 schedule). Same interface and semantics as flash_attention.cu, head_dim 128:
//
// Layout: q [B, Sq, H, D], k/v [B, Sk, H, D], o [B, Sq, H, D] (any strides whose innermost dim is
// contiguous and whose other strides are multiples of 8 elements), key padding mask [B, Sk] u8
// (non-zero = attend; may be null), lse [B, H, Sq] f32 (natural log of the softmax denominator of
// the scaled scores; +inf for rows whose keys are all masked, whose output is 0).
//
// One block = 128 query rows of one (batch, head), 3 warpgroups (384 threads):
// - warpgroup 0 (producer, FA3_PRODUCER_REGS registers) copies Q, and K and V tiles of 128 keys
//   into rings of FA3_STAGES slots each, with cp.async (16 B per thread and copy; rows past the
//   end are zero-filled); it writes each tile's per-key "keep" bytes (mask and Sk tail) and
//   signals the slot's "full" mbarrier (cp.async.mbarrier.arrive + an ordinary arrive). Order:
//   K(t), then V(t - 1), so K runs ahead of V as the consumers need them;
// - warpgroups 1 and 2 (consumers, FA3_CONSUMER_REGS registers) own 64 query rows each.
//   S = Q K^T is wgmma m64n128k16 with Q and K read from shared memory (128-byte swizzle,
//   K-major); P = exp2(S * scale_log2 - m) stays in registers and is the A operand of O += P V
//   (wgmma with A from registers, V read from shared memory through an MN-major descriptor).
//   Each consumer issues S(t) = Q K(t)^T and O += P(t-1) V(t-1) back to back and runs the
//   softmax of S(t) while the second product is still on the tensor cores; the two consumers
//   take turns issuing (named barriers 1 and 2), so one warpgroup's softmax overlaps the other's
//   matrix products. K(t) is released (its "empty" mbarrier) once S(t) is done, V(t - 1) once
//   O += P(t-1) V(t-1) is.
//
// Measured (B1 S8448 H24, H100 and H200): ~630 TFLOP/s, against ~345 for flash_attention.cu.
// The producer shares issue slots with the consumers: its full-tile copy path is ~3 instructions
// a copy, and giving it too few registers (spills) costs 3-30%.
//
// Shared-memory tiles are [2 halves of 64 columns][rows][128 B]; 16-byte chunk c of row r sits at
// chunk (c ^ (r & 7)): the hardware's 128-byte swizzle, so wgmma reads need no further care.
//
// Self-contained: no CUDA headers needed (bf16 handled as raw 16-bit values + PTX cvt).

typedef unsigned short bf16_t;
typedef unsigned char u8_t;
typedef unsigned int u32_t;
typedef unsigned long long u64_t;
typedef long long i64_t;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

#define FA3_D 128       // head dim
#define FA3_BM 128      // query rows per block (2 consumer warpgroups x 64)
#define FA3_BN 128      // keys per tile
#define FA3_THREADS 384 // producer warpgroup + 2 consumer warpgroups

// Tuning switches (compile with -D to try variants; the defaults are the measured best).
#ifndef FA3_STAGES
#define FA3_STAGES 3 // K and V ring depth (3 is the most that fits in 227 KB)
#endif
#ifndef FA3_PINGPONG
#define FA3_PINGPONG 1 // consumers take turns issuing their matrix products
#endif
#ifndef FA3_OVERLAP
#define FA3_OVERLAP 1 // softmax of S(t) overlaps O += P(t-1) V(t-1)
#endif
#ifndef FA3_CONSUMER_FENCE
#define FA3_CONSUMER_FENCE 1 // proxy fence between a tile's arrival and the wgmma reading it
#endif
#ifndef FA3_PRODUCER_REGS
#define FA3_PRODUCER_REGS 56
#endif
#ifndef FA3_CONSUMER_REGS
#define FA3_CONSUMER_REGS 224
#endif

// Shared-memory map (bytes from a 1024-aligned base).
// K and V have rings of their own (K(t) is needed half an iteration before V(t) and is released
// earlier). The per-key "keep" bytes and per-warp "all kept" flags of a tile travel with K(t)
// but are read until the softmax of S(t) ends, so they use a longer ring of FA3_KEEP_SLOTS
// (>= FA3_STAGES + 2: when the producer writes tile t's slot, it has already waited for V(t - 2 -
// FA3_STAGES) to be released, hence for the softmax of S(t - 2 - FA3_STAGES)).
#define FA3_KEEP_SLOTS 8
#define FA3_TILE_BYTES (FA3_BN * FA3_D * 2) // one K or V tile: 32 KB
#define FA3_HALF_BYTES (FA3_BN * 128)       // 64 columns of 128 rows: 16 KB
#define FA3_Q_OFF 0
#define FA3_K_OFF (FA3_BM * FA3_D * 2)                           // + s * FA3_TILE_BYTES
#define FA3_V_OFF (FA3_K_OFF + FA3_STAGES * FA3_TILE_BYTES)      // + s * FA3_TILE_BYTES
#define FA3_KEEP_OFF (FA3_V_OFF + FA3_STAGES * FA3_TILE_BYTES)   // u8 [slots][FA3_BN]
#define FA3_FLAG_OFF (FA3_KEEP_OFF + FA3_KEEP_SLOTS * FA3_BN)    // int [slots][4]
#define FA3_BAR_OFF (FA3_FLAG_OFF + FA3_KEEP_SLOTS * 16)         // 4 x FA3_STAGES mbarriers
#define FA3_SMEM_USED (FA3_BAR_OFF + 4 * FA3_STAGES * 8)
#define FA3_SMEM_BYTES (FA3_SMEM_USED + 1024) // + slack to align the base
#if FA3_KEEP_SLOTS < FA3_STAGES + 2
#error "FA3_KEEP_SLOTS too small"
#endif

__device__ __forceinline__ u32_t smem_u32(const void* p) {
    return (u32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async_16(u32_t dst, const void* src, bool valid) {
    int n = valid ? 16 : 0; // src-size 0: fill the 16 bytes with zeros, read nothing
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}

// ---- mbarriers
__device__ __forceinline__ void mbar_init(u32_t bar, u32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32_t bar) {
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives once every cp.async this thread issued so far has landed (the pending count is raised
// now, so the phase cannot complete before that).
__device__ __forceinline__ void mbar_arrive_cp_async(u32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32_t bar, u32_t parity) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "FA3_WAIT:\n"
                 "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra FA3_WAIT;\n"
                 "}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

// ---- named barriers (id 0 is __syncthreads)
__device__ __forceinline__ void named_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

// ---- wgmma
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of `d` across wgmma issue / wait points.
__device__ __forceinline__ void fence_regs(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void fence_regs(u32_t (&a)[32]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle. Offsets in bytes.
__device__ __forceinline__ u64_t smem_desc(u32_t addr, u32_t lbo, u32_t sbo) {
    return (u64_t)((addr & 0x3FFFF) >> 4) | ((u64_t)(lbo >> 4) << 16) | ((u64_t)(sbo >> 4) << 32) |
           (1ull << 62);
}

#define FA3_D64_LIST                                                                              \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "            \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "            \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define FA3_D64_OPS(d)                                                                            \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),           \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),   \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),             \
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),             \
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),             \
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),             \
        "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),             \
        "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),             \
        "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),             \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]),             \
        "+f"(d[62]), "+f"(d[63])

// d (+)= A B for a 64x128x16 tile: A and B from shared memory, both K-major.
__device__ __forceinline__ void wgmma_ss(float (&d)[64], u64_t da, u64_t db, int accumulate) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FA3_D64_LIST
                 ", %64, %65, p, 1, 1, 0, 0;\n"
                 "}\n"
                 : FA3_D64_OPS(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}
// d += A B for a 64x128x16 tile: A (bf16x2) from registers, B from shared memory, MN-major.
__device__ __forceinline__ void wgmma_rs(float (&d)[64], u32_t a0, u32_t a1, u32_t a2, u32_t a3,
                                         u64_t db) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FA3_D64_LIST
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
                 "}\n"
                 : FA3_D64_OPS(d)
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "r"(1));
}

// Two f32 -> packed bf16x2 (round to nearest even); `lo` lands in the low half (lower column).
__device__ __forceinline__ u32_t pack_bf16x2(float lo, float hi) {
    u32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// ---- consumer helpers (one warpgroup, 64 rows; thread holds rows r0 = 16 warp + lane/4 and r0 + 8)

// S = Q K^T over the 8 k16 steps of the head dim.
__device__ __forceinline__ void gemm_qk(float (&s)[64], u32_t q_addr, u32_t k_addr) {
#pragma unroll
    for (int k = 0; k < FA3_D / 16; ++k) {
        const u32_t off = (k / 4) * FA3_HALF_BYTES + (k % 4) * 32;
        // Q: 64 rows of the warpgroup, whose halves are 128 rows apart like K's
        wgmma_ss(s, smem_desc(q_addr + off, 16, 1024), smem_desc(k_addr + off, 16, 1024), k > 0);
    }
}

// O += P V over the 8 k16 steps of the key tile (P as bf16x2, 4 registers a step).
__device__ __forceinline__ void gemm_pv(float (&o)[64], const u32_t (&p)[32], u32_t v_addr) {
#pragma unroll
    for (int k = 0; k < FA3_BN / 16; ++k)
        wgmma_rs(o, p[4 * k], p[4 * k + 1], p[4 * k + 2], p[4 * k + 3],
                 smem_desc(v_addr + k * 16 * 128, FA3_HALF_BYTES, 1024));
}

// Online softmax of one score tile in the log2 domain: m = max(raw score) * scale_log2,
// p = exp2(score * scale_log2 - m) (written over s). Returns the factor for the old O and l.
__device__ __forceinline__ void softmax_tile(float (&s)[64], const u8_t* keep, bool all_keep,
                                             int quad, float scale_log2, float (&row_max)[2],
                                             float (&row_sum)[2], float (&alpha)[2]) {
    if (!all_keep) { // masked or out-of-range keys score -inf
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const unsigned short kk = *(const unsigned short*)(keep + j * 8 + 2 * quad);
            if (!(kk & 0xff)) s[4 * j] = s[4 * j + 2] = -INFINITY;
            if (!(kk >> 8)) s[4 * j + 1] = s[4 * j + 3] = -INFINITY;
        }
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 16; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_old = row_max[hf];
        const float m_new = fmaxf(m_old, mx * scale_log2);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        // exp2(m_old - m_new) is exactly 1 when the max is unchanged (-inf included)
        alpha[hf] = m_new == m_old ? 1.f : fast_exp2(m_old - m_use);
        row_max[hf] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const float p0 = fast_exp2(fmaf(s[4 * j + 2 * hf], scale_log2, -m_use));
            const float p1 = fast_exp2(fmaf(s[4 * j + 2 * hf + 1], scale_log2, -m_use));
            s[4 * j + 2 * hf] = p0;
            s[4 * j + 2 * hf + 1] = p1;
            sum += p0 + p1;
        }
        row_sum[hf] = row_sum[hf] * alpha[hf] + sum;
    }
}

// P (bf16) as the A operand of O += P V: the accumulator layout of S is the A-fragment layout.
__device__ __forceinline__ void convert_p(const float (&s)[64], u32_t (&p)[32]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) p[i] = pack_bf16x2(s[2 * i], s[2 * i + 1]);
}

__device__ __forceinline__ void rescale_o(float (&o)[64], const float (&alpha)[2]) {
    // Warp-uniform: once the running maxima settle, most tiles skip 64 multiplies.
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            o[4 * j] *= alpha[0];
            o[4 * j + 1] *= alpha[0];
            o[4 * j + 2] *= alpha[1];
            o[4 * j + 3] *= alpha[1];
        }
    }
}

extern "C" __global__ void __launch_bounds__(FA3_THREADS, 1)
    flash_attn_wgmma_fwd_d128(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                              const bf16_t* __restrict__ v, const u8_t* __restrict__ mask,
                              bf16_t* __restrict__ o, float* __restrict__ lse, int sq, int sk,
                              int heads, i64_t q_sb, i64_t q_ss, i64_t q_sh, i64_t k_sb, i64_t k_ss,
                              i64_t k_sh, i64_t v_sb, i64_t v_ss, i64_t v_sh, i64_t o_sb,
                              i64_t o_ss, i64_t o_sh, i64_t mask_sb, float scale_log2) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32_t raw_u = smem_u32(smem_raw);
    const u32_t base_u = (raw_u + 1023u) & ~1023u;
    unsigned char* smem = smem_raw + (base_u - raw_u);
    const u8_t* sKeep = smem + FA3_KEEP_OFF;
    const int* sFlag = (const int*)(smem + FA3_FLAG_OFF);
    const u32_t bar_full_k = base_u + FA3_BAR_OFF; // each + 8 s
    const u32_t bar_empty_k = bar_full_k + FA3_STAGES * 8;
    const u32_t bar_full_v = bar_empty_k + FA3_STAGES * 8;
    const u32_t bar_empty_v = bar_full_v + FA3_STAGES * 8;

    const int tid = threadIdx.x;
    const int q0 = blockIdx.x * FA3_BM;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int n_tiles = (sk + FA3_BN - 1) / FA3_BN;

    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < FA3_STAGES; ++s) {
            mbar_init(bar_full_k + 8 * s, 128);  // every producer thread (+ its copies)
            mbar_init(bar_empty_k + 8 * s, 256); // every consumer thread
            mbar_init(bar_full_v + 8 * s, 128);
            mbar_init(bar_empty_v + 8 * s, 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    const int wg = tid / 128;
    if (wg == 0) {
        // ------------------------------------------------------------------ producer
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(FA3_PRODUCER_REGS));
        // Thread copies 16-byte chunk lc of rows lr, lr + 8, ..., lr + 120 of each tile. The
        // rows step by 8, so every one has the same swizzle and the destinations step by 1 KB.
        const int lr = tid >> 4, lc = tid & 15;
        const u32_t soff = (lc >> 3) * FA3_HALF_BYTES + lr * 128 + (((lc & 7) ^ lr) << 4);
        const bf16_t* kb = k + b * k_sb + h * k_sh;
        const bf16_t* vb = v + b * v_sb + h * v_sh;
        const u8_t* mb = mask ? mask + b * mask_sb : nullptr;
        u8_t* keep_w = smem + FA3_KEEP_OFF;
        int* flag_w = (int*)(smem + FA3_FLAG_OFF);
        // Copies rows [r0, r0 + 128) of a [*, D] matrix (row stride ld) into a swizzled tile;
        // rows at or past `rows` are zero-filled. The producer shares issue slots with the
        // consumers, so the common full-tile case is kept to ~3 instructions a copy.
        auto load_tile = [&](u32_t dst, const bf16_t* src, i64_t ld, int r0, int rows) {
            const bf16_t* p = src + (i64_t)(r0 + lr) * ld + lc * 8;
            const i64_t step = 8 * ld;
            dst += soff;
            if (r0 + FA3_BN <= rows) {
#pragma unroll
                for (int i = 0; i < FA3_BN / 8; ++i) {
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst + i * 1024),
                                 "l"(p)
                                 : "memory");
                    p += step;
                }
            } else {
#pragma unroll 4
                for (int i = 0; i < FA3_BN / 8; ++i) {
                    const bool ok = r0 + lr + 8 * i < rows;
                    cp_async_16(dst + i * 1024, ok ? p : src, ok);
                    p += step;
                }
            }
        };
        // mask byte of key t * FA3_BN + tid, fetched one tile ahead
        auto fetch_keep = [&](int t) -> int {
            const int key = t * FA3_BN + tid;
            return key < sk && (mb == nullptr || mb[key] != 0);
        };
        int keep_next = n_tiles > 0 ? fetch_keep(0) : 0;
        // Iteration t loads K(t) and V(t - 1).
        for (int t = 0; t <= n_tiles; ++t) {
            if (t < n_tiles) {
                const int s = t % FA3_STAGES;
                if (t >= FA3_STAGES) mbar_wait(bar_empty_k + 8 * s, ((t / FA3_STAGES) + 1) & 1);
                if (t == 0)
                    load_tile(base_u + FA3_Q_OFF, q + b * q_sb + h * q_sh, q_ss, q0, sq);
                load_tile(base_u + FA3_K_OFF + s * FA3_TILE_BYTES, kb, k_ss, t * FA3_BN, sk);
                mbar_arrive_cp_async(bar_full_k + 8 * s);
                const int keep = keep_next;
                if (t + 1 < n_tiles) keep_next = fetch_keep(t + 1);
                const int slot = t % FA3_KEEP_SLOTS;
                keep_w[slot * FA3_BN + tid] = (u8_t)keep;
                const bool all = __all_sync(0xffffffffu, keep);
                if ((tid & 31) == 0) flag_w[slot * 4 + (tid >> 5)] = all ? 1 : 0;
                mbar_arrive(bar_full_k + 8 * s);
            }
            if (t >= 1) {
                const int tv = t - 1, s = tv % FA3_STAGES;
                if (tv >= FA3_STAGES) mbar_wait(bar_empty_v + 8 * s, ((tv / FA3_STAGES) + 1) & 1);
                load_tile(base_u + FA3_V_OFF + s * FA3_TILE_BYTES, vb, v_ss, tv * FA3_BN, sk);
                mbar_arrive_cp_async(bar_full_v + 8 * s);
                mbar_arrive(bar_full_v + 8 * s);
            }
        }
        asm volatile("cp.async.wait_all;\n" ::: "memory");
        return;
    }

    // ---------------------------------------------------------------------- consumers
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(FA3_CONSUMER_REGS));
    const int cw = wg - 1; // consumer warpgroup 0 / 1: rows 64 cw .. 64 cw + 63
    const int ctid = tid - 128 * wg;
    const int warp = ctid >> 5, lane = ctid & 31, quad = lane & 3;
    const u32_t q_addr = base_u + FA3_Q_OFF + cw * 64 * 128;
    auto k_addr = [&](int s) { return base_u + FA3_K_OFF + s * FA3_TILE_BYTES; };
    auto v_addr = [&](int s) { return base_u + FA3_V_OFF + s * FA3_TILE_BYTES; };
    auto softmax = [&](float (&s_acc)[64], int t, float (&row_max)[2], float (&row_sum)[2],
                       float (&alpha)[2]) {
        const int slot = t % FA3_KEEP_SLOTS;
        const int4 f = *(const int4*)(sFlag + 4 * slot);
        softmax_tile(s_acc, sKeep + slot * FA3_BN, (f.x & f.y & f.z & f.w) != 0, quad, scale_log2,
                     row_max, row_sum, alpha);
    };

    float acc_o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc_o[i] = 0.f;
    float s_acc[64];
    u32_t p[32];
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f}, alpha[2];

#if FA3_PINGPONG
    // Turn-taking: consumer c waits on barrier 1 + c before issuing its products and then lets
    // the other one go. Consumer 1 lets consumer 0 start.
    const int my_bar = 1 + cw, other_bar = 2 - cw;
    if (cw == 1 && n_tiles > 0) named_arrive(1, 256);
#define FA3_TURN_BEGIN() named_sync(my_bar, 256)
#define FA3_TURN_END() named_arrive(other_bar, 256)
#else
#define FA3_TURN_BEGIN()
#define FA3_TURN_END()
#endif
#if FA3_CONSUMER_FENCE
#define FA3_PROXY_FENCE() asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory")
#else
#define FA3_PROXY_FENCE()
#endif

    if (n_tiles > 0) {
        // tile 0: S only
        mbar_wait(bar_full_k, 0);
        FA3_PROXY_FENCE();
        FA3_TURN_BEGIN();
        wgmma_fence();
        gemm_qk(s_acc, q_addr, k_addr(0));
        wgmma_commit();
        FA3_TURN_END();
        wgmma_wait<0>();
        fence_regs(s_acc);
        mbar_arrive(bar_empty_k);
        softmax(s_acc, 0, row_max, row_sum, alpha);
        convert_p(s_acc, p);
    }
    for (int t = 1; t < n_tiles; ++t) {
        const int s = t % FA3_STAGES, sp = (t - 1) % FA3_STAGES;
        mbar_wait(bar_full_k + 8 * s, (t / FA3_STAGES) & 1);
        FA3_PROXY_FENCE();
        FA3_TURN_BEGIN();
        wgmma_fence();
        gemm_qk(s_acc, q_addr, k_addr(s));
        wgmma_commit();
#if !FA3_OVERLAP
        wgmma_wait<0>();
#endif
        mbar_wait(bar_full_v + 8 * sp, ((t - 1) / FA3_STAGES) & 1);
        FA3_PROXY_FENCE();
        gemm_pv(acc_o, p, v_addr(sp));
        wgmma_commit();
        FA3_TURN_END();
        wgmma_wait<1>();
        fence_regs(s_acc);
        mbar_arrive(bar_empty_k + 8 * s);
        softmax(s_acc, t, row_max, row_sum, alpha);
        wgmma_wait<0>();
        fence_regs(acc_o);
        fence_regs(p);
        mbar_arrive(bar_empty_v + 8 * sp);
        rescale_o(acc_o, alpha);
        convert_p(s_acc, p);
    }
    if (n_tiles > 0) {
        const int sp = (n_tiles - 1) % FA3_STAGES;
        mbar_wait(bar_full_v + 8 * sp, ((n_tiles - 1) / FA3_STAGES) & 1);
        FA3_PROXY_FENCE();
        FA3_TURN_BEGIN();
        wgmma_fence();
        gemm_pv(acc_o, p, v_addr(sp));
        wgmma_commit();
        FA3_TURN_END();
        wgmma_wait<0>();
        fence_regs(acc_o);
        mbar_arrive(bar_empty_v + 8 * sp);
#if FA3_PINGPONG
        if (cw == 0) named_sync(1, 256); // consumes consumer 1's last hand-over
#endif
    }

    // ---- epilogue: normalise, write lse and O (rows past sq are dropped)
    bf16_t* ob = o + b * o_sb + h * o_sh;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        float l = row_sum[hf];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int qi = q0 + cw * 64 + warp * 16 + (lane >> 2) + hf * 8;
        if (qi < sq) {
            if (quad == 0)
                lse[((i64_t)b * heads + h) * sq + qi] =
                    l > 0.f ? row_max[hf] * 0.69314718055994531f + logf(l) : INFINITY;
            bf16_t* orow = ob + (i64_t)qi * o_ss + 2 * quad;
#pragma unroll
            for (int j = 0; j < 16; ++j)
                *(u32_t*)(orow + 8 * j) =
                    pack_bf16x2(acc_o[4 * j + 2 * hf] * inv, acc_o[4 * j + 2 * hf + 1] * inv);
        }
    }
}
