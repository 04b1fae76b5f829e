// Standalone check + timing harness for the flash-attention kernels (development aid, not built
// by cargo). Build on a Hopper machine:
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -o attn_harness runtime/kernels/dev/attn_harness.cu
// Pass -DFA3_... switches to try variants of flash_attention_wgmma.cu.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace fa2 {
#include "../flash_attention.cu"
}
namespace fa3 {
#include "../flash_attention_wgmma.cu"
}

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));    \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

typedef unsigned short bf16;
typedef long long i64;

static float bf2f(bf16 x) {
    unsigned u = (unsigned)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static bf16 f2bf(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (bf16)(u >> 16);
}

struct Rng {
    unsigned long long s;
    explicit Rng(unsigned long long seed) : s(seed * 0x9E3779B97F4A7C15ull | 1) {}
    float uniform() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return (float)((s * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1u << 24);
    }
};

struct Strides {
    i64 b, s, h;
};

// f32 reference: one block per (row, head, batch), 128 threads (= D).
__global__ void ref_attn(const bf16* q, const bf16* k, const bf16* v, const unsigned char* mask,
                         float* out, float* lse, int sq, int sk, int heads, Strides qs, Strides ks,
                         Strides vs, i64 mask_sb, float scale) {
    extern __shared__ float sc[];
    __shared__ float red[128];
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t = threadIdx.x;
    const bf16* qr = q + b * qs.b + i * qs.s + h * qs.h;
    for (int j = t; j < sk; j += 128) {
        const bf16* kr = k + b * ks.b + (i64)j * ks.s + h * ks.h;
        float acc = 0.f;
        for (int d = 0; d < 128; ++d) acc += __uint_as_float((unsigned)qr[d] << 16) *
                                             __uint_as_float((unsigned)kr[d] << 16);
        bool keep = mask == nullptr || mask[b * mask_sb + j] != 0;
        sc[j] = keep ? acc * scale : -INFINITY;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = t; j < sk; j += 128) mx = fmaxf(mx, sc[j]);
    red[t] = mx;
    __syncthreads();
    for (int w = 64; w > 0; w >>= 1) {
        if (t < w) red[t] = fmaxf(red[t], red[t + w]);
        __syncthreads();
    }
    mx = red[0];
    __syncthreads();
    float sum = 0.f;
    for (int j = t; j < sk; j += 128) {
        float p = mx == -INFINITY ? 0.f : expf(sc[j] - mx);
        sc[j] = p;
        sum += p;
    }
    red[t] = sum;
    __syncthreads();
    for (int w = 64; w > 0; w >>= 1) {
        if (t < w) red[t] += red[t + w];
        __syncthreads();
    }
    sum = red[0];
    float acc = 0.f;
    for (int j = 0; j < sk; ++j)
        if (sc[j] != 0.f)
            acc += sc[j] * __uint_as_float((unsigned)v[b * vs.b + (i64)j * vs.s + h * vs.h + t] << 16);
    out[(((i64)b * sq + i) * heads + h) * 128 + t] = sum > 0.f ? acc / sum : 0.f;
    if (t == 0) lse[((i64)b * heads + h) * sq + i] = sum > 0.f ? mx + logf(sum) : INFINITY;
}

struct Case {
    const char* name;
    int b, sq, sk, h;
    int mask_kind; // 0 none, 1 padding (batch0 last 23 masked, batch1 random 40% kept), 2 fully
                   // masked (batch 0 none, batch 1 only the last key), 3 text padding 236..255
    bool packed;
};

enum Kern { K_FA2, K_FA3 };

static void launch(Kern kern, const bf16* q, const bf16* k, const bf16* v,
                   const unsigned char* mask, bf16* o, float* lse, int b, int sq, int sk, int h,
                   Strides qs, Strides ks, Strides vs, Strides os, i64 mask_sb, float scale_log2) {
    dim3 grid((sq + 127) / 128, h, b);
    if (kern == K_FA2) {
        int smem = 128 * 128 * 2 + 4 * 64 * 128 * 2 + 2 * 64 * 4 + 16;
        fa2::flash_attn_fwd_d128<<<grid, 128, smem>>>(q, k, v, mask, o, lse, sq, sk, h, qs.b, qs.s,
                                                       qs.h, ks.b, ks.s, ks.h, vs.b, vs.s, vs.h,
                                                       os.b, os.s, os.h, mask_sb, scale_log2);
    } else {
        fa3::flash_attn_wgmma_fwd_d128<<<grid, FA3_THREADS, FA3_SMEM_BYTES>>>(
            q, k, v, mask, o, lse, sq, sk, h, qs.b, qs.s, qs.h, ks.b, ks.s, ks.h, vs.b, vs.s, vs.h,
            os.b, os.s, os.h, mask_sb, scale_log2);
    }
    CK(cudaGetLastError());
}

struct Problem {
    Case c;
    bf16 *q, *k, *v, *o;
    float *lse, *ref_o, *ref_lse;
    unsigned char* mask;
    Strides qs, ks, vs, os;
    std::vector<unsigned char> hmask;
};

static Problem make(const Case& c, unsigned long long seed) {
    Problem p{};
    p.c = c;
    const int D = 128;
    Rng rng(seed);
    auto rnd = [&](size_t n) {
        std::vector<bf16> x(n);
        for (auto& e : x) e = f2bf((rng.uniform() * 2.f - 1.f) * 1.7320508f);
        return x;
    };
    auto up = [&](const std::vector<bf16>& x) {
        bf16* d;
        CK(cudaMalloc(&d, x.size() * 2));
        CK(cudaMemcpy(d, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
        return d;
    };
    if (c.packed) {
        auto x = rnd((size_t)c.b * c.sq * 3 * c.h * D);
        bf16* base = up(x);
        p.q = base;
        p.k = base + c.h * D;
        p.v = base + 2 * c.h * D;
        Strides st{(i64)c.sq * 3 * c.h * D, (i64)3 * c.h * D, D};
        p.qs = p.ks = p.vs = st;
    } else {
        p.q = up(rnd((size_t)c.b * c.sq * c.h * D));
        p.k = up(rnd((size_t)c.b * c.sk * c.h * D));
        p.v = up(rnd((size_t)c.b * c.sk * c.h * D));
        p.qs = {(i64)c.sq * c.h * D, (i64)c.h * D, D};
        p.ks = p.vs = {(i64)c.sk * c.h * D, (i64)c.h * D, D};
    }
    p.os = {(i64)c.sq * c.h * D, (i64)c.h * D, D};
    CK(cudaMalloc(&p.o, (size_t)c.b * c.sq * c.h * D * 2));
    CK(cudaMalloc(&p.lse, (size_t)c.b * c.h * c.sq * 4));
    p.mask = nullptr;
    if (c.mask_kind) {
        p.hmask.assign((size_t)c.b * c.sk, 0);
        for (int bi = 0; bi < c.b; ++bi)
            for (int j = 0; j < c.sk; ++j) {
                unsigned char m = 1;
                if (c.mask_kind == 1) m = bi % 2 == 0 ? (j + 23 < c.sk) : (rng.uniform() < 0.4f);
                if (c.mask_kind == 2) m = (bi == 1 && j == c.sk - 1);
                if (c.mask_kind == 3) m = !(j >= 236 && j < 256);
                p.hmask[(size_t)bi * c.sk + j] = m;
            }
        CK(cudaMalloc(&p.mask, p.hmask.size()));
        CK(cudaMemcpy(p.mask, p.hmask.data(), p.hmask.size(), cudaMemcpyHostToDevice));
    }
    return p;
}

static void free_problem(Problem& p) {
    if (p.c.packed) {
        cudaFree(p.q);
    } else {
        cudaFree(p.q);
        cudaFree(p.k);
        cudaFree(p.v);
    }
    cudaFree(p.o);
    cudaFree(p.lse);
    if (p.mask) cudaFree(p.mask);
}

static void run_kernel(Kern kern, Problem& p) {
    const Case& c = p.c;
    float scale_log2 = (1.f / sqrtf(128.f)) * 1.4426950408889634f;
    launch(kern, p.q, p.k, p.v, p.mask, p.o, p.lse, c.b, c.sq, c.sk, c.h, p.qs, p.ks, p.vs, p.os,
           c.sk, scale_log2);
}

// Returns (out, lse) after poisoning, two runs checked bitwise equal.
static bool run_checked(Kern kern, Problem& p, std::vector<bf16>& out, std::vector<float>& lse) {
    const Case& c = p.c;
    size_t no = (size_t)c.b * c.sq * c.h * 128, nl = (size_t)c.b * c.h * c.sq;
    std::vector<bf16> o1(no);
    std::vector<float> l1(nl);
    bool same = true;
    for (int run = 0; run < 2; ++run) {
        std::vector<bf16> poison(no, 0x7fc0);
        std::vector<float> lpoison(nl, NAN);
        CK(cudaMemcpy(p.o, poison.data(), no * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(p.lse, lpoison.data(), nl * 4, cudaMemcpyHostToDevice));
        run_kernel(kern, p);
        CK(cudaDeviceSynchronize());
        out.resize(no);
        lse.resize(nl);
        CK(cudaMemcpy(out.data(), p.o, no * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(lse.data(), p.lse, nl * 4, cudaMemcpyDeviceToHost));
        if (run == 0) {
            o1 = out;
            l1 = lse;
        } else {
            same = memcmp(o1.data(), out.data(), no * 2) == 0;
        }
    }
    return same;
}

static int failures = 0;
static double worst[2][2];
static bool verbose = getenv("VERBOSE") != nullptr;

static void check_case(const Case& c, unsigned long long seed) {
    Problem p = make(c, seed);
    size_t no = (size_t)c.b * c.sq * c.h * 128, nl = (size_t)c.b * c.h * c.sq;
    float *ro, *rl;
    CK(cudaMalloc(&ro, no * 4));
    CK(cudaMalloc(&rl, nl * 4));
    ref_attn<<<dim3(c.sq, c.h, c.b), 128, c.sk * 4>>>(p.q, p.k, p.v, p.mask, ro, rl, c.sq, c.sk,
                                                      c.h, p.qs, p.ks, p.vs, c.sk,
                                                      1.f / sqrtf(128.f));
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> ref_o(no), ref_l(nl);
    CK(cudaMemcpy(ref_o.data(), ro, no * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ref_l.data(), rl, nl * 4, cudaMemcpyDeviceToHost));
    for (Kern kern : {K_FA2, K_FA3}) {
        std::vector<bf16> out;
        std::vector<float> lse;
        bool same = run_checked(kern, p, out, lse);
        double num = 0, den = 0;
        size_t bad = 0;
        for (size_t i = 0; i < no; ++i) {
            float g = bf2f(out[i]);
            if (!std::isfinite(g)) {
                ++bad;
                continue;
            }
            num += (g - ref_o[i]) * (double)(g - ref_o[i]);
            den += (double)ref_o[i] * ref_o[i];
        }
        double err = den > 0 ? sqrt(num / den) : sqrt(num);
        double lerr = 0;
        bool inf_ok = true;
        for (size_t i = 0; i < nl; ++i) {
            if (std::isinf(ref_l[i]))
                inf_ok &= lse[i] == INFINITY;
            else if (std::isfinite(lse[i]))
                lerr = std::max(lerr, (double)fabs(lse[i] - ref_l[i]));
            else
                lerr = INFINITY;
        }
        bool ok = bad == 0 && err < 1e-2 && lerr < 1e-2 && inf_ok && same;
        if (!ok) ++failures;
        double& we = worst[kern == K_FA2 ? 0 : 1][0];
        double& wl = worst[kern == K_FA2 ? 0 : 1][1];
        we = std::max(we, err);
        wl = std::max(wl, lerr);
        if (!ok || verbose) printf("%-4s %-36s rel-L2 %.2e  lse %.2e  nonfinite %zu  inf_ok %d  deterministic %d  %s\n",
               kern == K_FA2 ? "fa2" : "fa3", c.name, err, lerr, bad, (int)inf_ok, (int)same,
               ok ? "OK" : "FAIL");
    }
    cudaFree(ro);
    cudaFree(rl);
    free_problem(p);
}

static double time_kernel(Kern kern, Problem& p, int warmup, int iters) {
    for (int i = 0; i < warmup; ++i) run_kernel(kern, p);
    CK(cudaDeviceSynchronize());
    std::vector<cudaEvent_t> ev(2 * iters);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    for (int i = 0; i < iters; ++i) {
        CK(cudaEventRecord(ev[2 * i]));
        run_kernel(kern, p);
        CK(cudaEventRecord(ev[2 * i + 1]));
    }
    CK(cudaDeviceSynchronize());
    std::vector<float> ms(iters);
    for (int i = 0; i < iters; ++i) CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (auto& e : ev) cudaEventDestroy(e);
    std::sort(ms.begin(), ms.end());
    return ms[iters / 2];
}

int main(int argc, char** argv) {
    bool bench = argc < 2 || strcmp(argv[1], "check") != 0;
    bool check = argc < 2 || strcmp(argv[1], "bench") != 0;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    CK(cudaFuncSetAttribute(fa2::flash_attn_fwd_d128, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            128 * 128 * 2 + 4 * 64 * 128 * 2 + 2 * 64 * 4 + 16));
    CK(cudaFuncSetAttribute(fa3::flash_attn_wgmma_fwd_d128,
                            cudaFuncAttributeMaxDynamicSharedMemorySize, FA3_SMEM_BYTES));
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, fa3::flash_attn_wgmma_fwd_d128));
    printf("%s  fa3: regs %d local %zu smem %d  [stages %d pingpong %d overlap %d]\n", prop.name,
           fa.numRegs, fa.localSizeBytes, FA3_SMEM_BYTES, FA3_STAGES, FA3_PINGPONG, FA3_OVERLAP);

    if (check) {
        Case cases[] = {
            {"B2 S300 H3 masked", 2, 300, 300, 3, 1, false},
            {"Sq300 Sk300", 1, 300, 300, 2, 0, false},
            {"Sq130 Sk200", 1, 130, 200, 2, 0, false},
            {"Sq64 Sk1", 1, 64, 1, 2, 0, false},
            {"Sq1 Sk77", 1, 1, 77, 2, 0, false},
            {"Sq129 Sk64", 1, 129, 64, 2, 0, false},
            {"Sq257 Sk520", 1, 257, 520, 2, 0, false},
            {"fully masked batch", 2, 150, 150, 2, 2, false},
            {"packed qkv B2 S190 H3 masked", 2, 190, 190, 3, 1, true},
            {"B1 Sq1000 Sk1100 H2 masked", 1, 1000, 1100, 2, 1, false},
            {"B1 S2048 H4 text mask", 1, 2048, 2048, 4, 3, false},
        };
        unsigned long long seed = 1;
        for (auto& c : cases) check_case(c, seed++);
        printf("check: %d failures; worst rel-L2 / lse err: fa2 %.2e / %.2e, fa3 %.2e / %.2e\n",
               failures, worst[0][0], worst[0][1], worst[1][0], worst[1][1]);
    }
    if (bench) {
        const int n = 8448, h = 24;
        for (int masked = 0; masked < 2; ++masked) {
            Case c{masked ? "B1 N8448 H24 D128 mask" : "B1 N8448 H24 D128", 1, n, n, h,
                   masked ? 3 : 0, false};
            Problem p = make(c, 100 + masked);
            std::vector<bf16> o2, o3;
            std::vector<float> l2, l3;
            run_checked(K_FA2, p, o2, l2);
            bool same = run_checked(K_FA3, p, o3, l3);
            double num = 0, den = 0, lmax = 0;
            size_t bad = 0;
            for (size_t i = 0; i < o2.size(); ++i) {
                float a = bf2f(o2[i]), g = bf2f(o3[i]);
                if (!std::isfinite(g)) ++bad;
                num += (g - a) * (double)(g - a);
                den += (double)a * a;
            }
            for (size_t i = 0; i < l2.size(); ++i) lmax = std::max(lmax, (double)fabs(l2[i] - l3[i]));
            double flops = 4.0 * n * (double)n * h * 128;
            double t2 = time_kernel(K_FA2, p, 5, 30), t3 = time_kernel(K_FA3, p, 5, 30);
            printf("%-26s fa2 %.3f ms %6.1f TFLOP/s | fa3 %.3f ms %6.1f TFLOP/s | fa3 vs fa2 "
                   "rel-L2 %.2e lse %.2e nonfinite %zu det %d\n",
                   c.name, t2, flops / t2 / 1e9, t3, flops / t3 / 1e9, sqrt(num / den), lmax, bad,
                   (int)same);
            free_problem(p);
        }
    }
    return failures ? 1 : 0;
}
