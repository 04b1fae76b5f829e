// Flash-attention forward (FlashAttention-2 schedule) for bf16 q/k/v, f32 online softmax.
//
// Layout: q [B, Sq, H, D], k/v [B, Sk, H, D], o [B, Sq, H, D] (any strides whose innermost dim is
// contiguous and whose other strides are multiples of 8 elements), key padding mask [B, Sk] u8
// (non-zero = attend; may be null), lse [B, H, Sq] f32 (natural log of the softmax denominator of
// the scaled scores; +inf for rows whose keys are all masked, whose output is 0).
//
// One block = 128 query rows of one (batch, head); 4 warps, each owning 32 rows (two m16 tiles).
// K/V tiles of 64 keys are double buffered in shared memory through cp.async; fragments come
// from ldmatrix (rows XOR-swizzled in 16-byte chunks, so ldmatrix is free of bank conflicts);
// S = Q K^T and O += P V run on mma.sync.m16n8k16 bf16 tensor-core instructions with f32
// accumulators. P never leaves registers (the S accumulator layout is the A-operand layout).
//
// Self-contained: no CUDA headers needed (bf16 handled as raw 16-bit values + PTX cvt).

typedef unsigned short bf16_t;
typedef unsigned char u8_t;
typedef unsigned int u32_t;
typedef long long i64_t;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

#define FA_WARPS 4
#define FA_M_TILES 2                       // m16 tiles per warp
#define FA_BM (16 * FA_M_TILES * FA_WARPS) // 128 query rows per block
#define FA_BN 64                           // keys per tile
#define FA_THREADS (32 * FA_WARPS)

// Tuning switches (compile with -D to try variants; the defaults are the measured best).
#ifndef FA_KS_UNROLL
#define FA_KS_UNROLL 8 // unroll of the k-loop of S = Q K^T (8: full; ~16 B of spills, still fastest)
#endif
#ifndef FA_SKIP_RESCALE
#define FA_SKIP_RESCALE 1 // skip rescaling O when no row max of the warp changed
#endif
#ifndef FA_PREFETCH_Q
#define FA_PREFETCH_Q 0 // load the next k-step's Q fragments before this step's MMAs
#endif

__device__ __forceinline__ u32_t smem_u32(const void* p) {
    return (u32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async_16(u32_t dst, const void* src, bool valid) {
    int n = valid ? 16 : 0; // src-size 0: fill the 16 bytes with zeros, read nothing
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(u32_t addr, u32_t& r0, u32_t& r1, u32_t& r2, u32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32_t addr, u32_t& r0, u32_t& r1, u32_t& r2,
                                                  u32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// d += a * b for one m16n8k16 tile (bf16 inputs, f32 accumulators).
__device__ __forceinline__ void mma_bf16(float* d, const u32_t* a, u32_t b0, u32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile whose rows are CHUNKS chunks long.
template <int CHUNKS> __device__ __forceinline__ u32_t swz(int row, int chunk) {
    return (u32_t)(row * CHUNKS * 16 + ((chunk ^ (row & 7)) << 4));
}

template <int D>
__device__ __forceinline__ void flash_fwd(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                          const bf16_t* __restrict__ v, const u8_t* __restrict__ mask,
                                          bf16_t* __restrict__ o, float* __restrict__ lse, int sq,
                                          int sk, int heads, i64_t q_sb, i64_t q_ss, i64_t q_sh,
                                          i64_t k_sb, i64_t k_ss, i64_t k_sh, i64_t v_sb, i64_t v_ss,
                                          i64_t v_sh, i64_t o_sb, i64_t o_ss, i64_t o_sh,
                                          i64_t mask_sb, float scale_log2) {
    constexpr int CH = D / 8;                 // 16-byte chunks per row
    constexpr int KSTEPS = D / 16;            // k16 steps over the head dim (S = Q K^T)
    constexpr int NT = FA_BN / 8;             // n8 tiles of S per m16 tile
    constexpr int DT = D / 8;                 // n8 tiles of O per m16 tile
    constexpr int Q_BYTES = FA_BM * D * 2;
    constexpr int KV_BYTES = FA_BN * D * 2;

    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* sQ = smem;
    unsigned char* sK = smem + Q_BYTES;            // 2 buffers
    unsigned char* sV = sK + 2 * KV_BYTES;         // 2 buffers
    float* sBias = (float*)(sV + 2 * KV_BYTES);    // 2 x FA_BN additive biases (0 or -inf), then 2 x 2 flags

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int q0 = blockIdx.x * FA_BM;
    const int h = blockIdx.y;
    const int b = blockIdx.z;

    const bf16_t* qb = q + b * q_sb + h * q_sh;
    const bf16_t* kb = k + b * k_sb + h * k_sh;
    const bf16_t* vb = v + b * v_sb + h * v_sh;
    const u8_t* mb = mask ? mask + b * mask_sb : nullptr;

    const u32_t sQ_u = smem_u32(sQ);
    const u32_t sK_u = smem_u32(sK);
    const u32_t sV_u = smem_u32(sV);

    // ---- issue loads: Q tile, then K/V tile 0 (one group). Each thread copies the 16-byte
    // chunk `lc` of rows lr, lr + RS, lr + 2 RS, ...; RS is a multiple of 8, so the swizzle of
    // every one of those rows is the same and the shared-memory offsets step by a constant.
    constexpr int RS = FA_THREADS / CH;
    const int lr = tid / CH, lc = tid % CH;
    const u32_t lsm = swz<CH>(lr, lc);
    {
        const bf16_t* src = qb + (i64_t)(q0 + lr) * q_ss + lc * 8;
#pragma unroll
        for (int i = 0; i < FA_BM / RS; ++i) {
            bool ok = q0 + lr + i * RS < sq;
            cp_async_16(sQ_u + lsm + i * RS * CH * 16, ok ? src + (i64_t)i * RS * q_ss : qb, ok);
        }
    }
    const int n_tiles = (sk + FA_BN - 1) / FA_BN;
    // sFlag[buf] = 1 when every key of that tile is in range and unmasked (softmax skips the bias).
    int* sFlag = (int*)(sBias + 2 * FA_BN);
    auto load_kv = [&](int tile, int buf) {
        const int k0 = tile * FA_BN;
        const bf16_t* ksrc = kb + (i64_t)(k0 + lr) * k_ss + lc * 8;
        const bf16_t* vsrc = vb + (i64_t)(k0 + lr) * v_ss + lc * 8;
        const u32_t kdst = sK_u + buf * KV_BYTES + lsm;
        const u32_t vdst = sV_u + buf * KV_BYTES + lsm;
#pragma unroll
        for (int i = 0; i < FA_BN / RS; ++i) {
            bool ok = k0 + lr + i * RS < sk;
            cp_async_16(kdst + i * RS * CH * 16, ok ? ksrc + (i64_t)i * RS * k_ss : kb, ok);
            cp_async_16(vdst + i * RS * CH * 16, ok ? vsrc + (i64_t)i * RS * v_ss : vb, ok);
        }
    };
    // Mask bytes travel through a register one tile ahead (fetch_mask(t + 2) is issued while
    // tile t is computed), so no warp waits on a global load before the per-tile barrier.
    auto fetch_mask = [&](int tile) -> int {
        const int ki = tile * FA_BN + tid;
        return (mb != nullptr && tid < FA_BN && ki < sk) ? (int)mb[ki] : 1;
    };
    auto store_bias = [&](int tile, int buf, int mask_val) {
        if (tid < FA_BN) {
            const bool keep = tile * FA_BN + tid < sk && mask_val != 0;
            sBias[buf * FA_BN + tid] = keep ? 0.f : -INFINITY;
            // FA_BN == 64: warps 0 and 1 each vote for their 32 keys
            const bool all = __all_sync(0xffffffffu, keep);
            if (lane == 0) sFlag[buf * 2 + warp] = all ? 1 : 0;
        }
    };
    int mask_next = 1;
    if (n_tiles > 0) {
        load_kv(0, 0);
        store_bias(0, 0, fetch_mask(0));
        mask_next = fetch_mask(1);
    }
    cp_async_commit();

    float acc_o[FA_M_TILES][DT][4];
#pragma unroll
    for (int mt = 0; mt < FA_M_TILES; ++mt)
#pragma unroll
        for (int j = 0; j < DT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_o[mt][j][e] = 0.f;
    // Per thread: rows (lane/4) and (lane/4 + 8) of each m16 tile -> index [mt][half].
    float row_max[FA_M_TILES][2], row_sum[FA_M_TILES][2];
#pragma unroll
    for (int mt = 0; mt < FA_M_TILES; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            row_max[mt][hf] = -INFINITY;
            row_sum[mt][hf] = 0.f;
        }

    const int warp_row0 = warp * 16 * FA_M_TILES;
    // ldmatrix lane -> (row, chunk) roles
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8; // A operand (Q), V (trans)
    const int lchunk_hi = lane >> 4;                       // A operand (Q), V (trans)
    const int krow = (lane & 7) + (lane >> 4) * 8;         // K (B operand, two n8 tiles)
    const int kchunk = (lane >> 3) & 1;

    for (int t = 0; t < n_tiles; ++t) {
        const int buf = t & 1;
        if (t + 1 < n_tiles) {
            load_kv(t + 1, buf ^ 1);
            store_bias(t + 1, buf ^ 1, mask_next);
            mask_next = fetch_mask(t + 2);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        // ---- S = Q K^T (raw scores, f32)
        float s[FA_M_TILES][NT][4];
#pragma unroll
        for (int mt = 0; mt < FA_M_TILES; ++mt)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.f;
        const u32_t kbase = sK_u + buf * KV_BYTES;
        constexpr int KS_UNROLL = FA_KS_UNROLL;
        u32_t a[FA_M_TILES][4];
        auto load_q = [&](int ks) {
#pragma unroll
            for (int mt = 0; mt < FA_M_TILES; ++mt)
                ldmatrix_x4(sQ_u + swz<CH>(warp_row0 + mt * 16 + lrow, ks * 2 + lchunk_hi), a[mt][0],
                            a[mt][1], a[mt][2], a[mt][3]);
        };
#if FA_PREFETCH_Q
        load_q(0);
#endif
#pragma unroll KS_UNROLL
        for (int ks = 0; ks < KSTEPS; ++ks) {
#if FA_PREFETCH_Q
            u32_t a_cur[FA_M_TILES][4];
#pragma unroll
            for (int mt = 0; mt < FA_M_TILES; ++mt)
#pragma unroll
                for (int e = 0; e < 4; ++e) a_cur[mt][e] = a[mt][e];
            load_q((ks + 1) & (KSTEPS - 1)); // the last step reloads step 0: harmless
#else
            load_q(ks);
            u32_t (&a_cur)[FA_M_TILES][4] = a;
#endif
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32_t b0, b1, b2, b3;
                ldmatrix_x4(kbase + swz<CH>(np * 16 + krow, ks * 2 + kchunk), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < FA_M_TILES; ++mt) {
                    mma_bf16(s[mt][2 * np], a_cur[mt], b0, b1);
                    mma_bf16(s[mt][2 * np + 1], a_cur[mt], b2, b3);
                }
            }
        }

        // ---- online softmax in the log2 domain: m = max(raw score) * scale_log2,
        // p = exp2(score * scale_log2 - m). Masked / out-of-range keys get a -inf bias.
        if (!(sFlag[buf * 2] & sFlag[buf * 2 + 1])) {
            const float* bias = sBias + buf * FA_BN;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const float2 bc = *(const float2*)(bias + j * 8 + 2 * (lane & 3));
#pragma unroll
                for (int mt = 0; mt < FA_M_TILES; ++mt) {
                    s[mt][j][0] += bc.x;
                    s[mt][j][1] += bc.y;
                    s[mt][j][2] += bc.x;
                    s[mt][j][3] += bc.y;
                }
            }
        }
        float alpha[FA_M_TILES][2];
        bool max_changed = false;
#pragma unroll
        for (int mt = 0; mt < FA_M_TILES; ++mt) {
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                float mx = -INFINITY;
#pragma unroll
                for (int j = 0; j < NT; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * hf], s[mt][j][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_old = row_max[mt][hf];
                const float m_new = fmaxf(m_old, mx * scale_log2);
                const float m_use = m_new == -INFINITY ? 0.f : m_new;
                // exp2(m_old - m_new) is exactly 1 when the max is unchanged (-inf included)
                alpha[mt][hf] = m_new == m_old ? 1.f : fast_exp2(m_old - m_use);
                max_changed |= m_new != m_old;
                row_max[mt][hf] = m_new;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    float p0 = fast_exp2(fmaf(s[mt][j][2 * hf], scale_log2, -m_use));
                    float p1 = fast_exp2(fmaf(s[mt][j][2 * hf + 1], scale_log2, -m_use));
                    s[mt][j][2 * hf] = p0;
                    s[mt][j][2 * hf + 1] = p1;
                    sum += p0 + p1;
                }
                row_sum[mt][hf] = row_sum[mt][hf] * alpha[mt][hf] + sum;
            }
        }
#if FA_SKIP_RESCALE
        // Warp-uniform: once the running maxima settle, most tiles skip 128 multiplies.
        if (__any_sync(0xffffffffu, max_changed))
#endif
        {
#pragma unroll
            for (int mt = 0; mt < FA_M_TILES; ++mt)
#pragma unroll
                for (int j = 0; j < DT; ++j) {
                    acc_o[mt][j][0] *= alpha[mt][0];
                    acc_o[mt][j][1] *= alpha[mt][0];
                    acc_o[mt][j][2] *= alpha[mt][1];
                    acc_o[mt][j][3] *= alpha[mt][1];
                }
        }

        // ---- O += P V  (P from registers: the S accumulator layout is the A-operand layout)
        const u32_t vbase = sV_u + buf * KV_BYTES;
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk) {
            u32_t a[FA_M_TILES][4];
#pragma unroll
            for (int mt = 0; mt < FA_M_TILES; ++mt) {
                a[mt][0] = pack_bf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                a[mt][1] = pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                a[mt][2] = pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                a[mt][3] = pack_bf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < DT / 2; ++dp) {
                u32_t b0, b1, b2, b3;
                ldmatrix_x4_trans(vbase + swz<CH>(kk * 16 + lrow, dp * 2 + lchunk_hi), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < FA_M_TILES; ++mt) {
                    mma_bf16(acc_o[mt][2 * dp], a[mt], b0, b1);
                    mma_bf16(acc_o[mt][2 * dp + 1], a[mt], b2, b3);
                }
            }
        }
        __syncthreads(); // buffer `buf` is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();
    __syncthreads();

    // ---- epilogue: normalise, write lse, stage O (bf16) in this warp's rows of sQ, store 16 B/lane
#pragma unroll
    for (int mt = 0; mt < FA_M_TILES; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            float l = row_sum[mt][hf];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int r = warp_row0 + mt * 16 + (lane >> 2) + hf * 8;
            const int qi = q0 + r;
            if ((lane & 3) == 0 && qi < sq) {
                const float m = row_max[mt][hf];
                lse[((i64_t)b * heads + h) * sq + qi] =
                    l > 0.f ? m * 0.69314718055994531f + logf(l) : INFINITY;
            }
#pragma unroll
            for (int j = 0; j < DT; ++j) {
                u32_t packed = pack_bf16x2(acc_o[mt][j][2 * hf] * inv, acc_o[mt][j][2 * hf + 1] * inv);
                u32_t addr = sQ_u + swz<CH>(r, j) + (lane & 3) * 4;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(packed));
            }
        }
    }
    __syncwarp();
    bf16_t* ob = o + b * o_sb + h * o_sh;
#pragma unroll
    for (int i = 0; i < 16 * FA_M_TILES * CH / 32; ++i) {
        int id = lane + i * 32;
        int r = warp_row0 + id / CH, c = id % CH;
        int qi = q0 + r;
        uint4 val;
        asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(val.x), "=r"(val.y), "=r"(val.z), "=r"(val.w)
                     : "r"(sQ_u + swz<CH>(r, c)));
        if (qi < sq) *(uint4*)(ob + (i64_t)qi * o_ss + c * 8) = val;
    }
}

#define FA_ARGS                                                                                   \
    const bf16_t *q, const bf16_t *k, const bf16_t *v, const u8_t *mask, bf16_t *o, float *lse,  \
        int sq, int sk, int heads, i64_t q_sb, i64_t q_ss, i64_t q_sh, i64_t k_sb, i64_t k_ss,    \
        i64_t k_sh, i64_t v_sb, i64_t v_ss, i64_t v_sh, i64_t o_sb, i64_t o_ss, i64_t o_sh,       \
        i64_t mask_sb, float scale_log2
#define FA_PASS                                                                                   \
    q, k, v, mask, o, lse, sq, sk, heads, q_sb, q_ss, q_sh, k_sb, k_ss, k_sh, v_sb, v_ss, v_sh,   \
        o_sb, o_ss, o_sh, mask_sb, scale_log2

extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) flash_attn_fwd_d128(FA_ARGS) {
    flash_fwd<128>(FA_PASS);
}
extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) flash_attn_fwd_d64(FA_ARGS) {
    flash_fwd<64>(FA_PASS);
}
