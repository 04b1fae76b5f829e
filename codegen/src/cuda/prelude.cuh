// qie generated-kernel prelude: storage types, conversions and exact helpers. Needs no CUDA
// header (NVRTC provides the math functions), so a machine with only the driver and NVRTC works.
//
// Storage: bf16 / f16 as 16-bit structs (distinct types, so overloads can tell them apart), bool
// as one byte. Registers: every float dtype is computed in f32.

struct __align__(2) bf16_t { unsigned short bits; };
struct __align__(2) f16_t { unsigned short bits; };
typedef unsigned char u8_t;

#define QINF __int_as_float(0x7f800000)
#define QNAN __int_as_float(0x7fc00000)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16_t x) { return __uint_as_float(((unsigned)x.bits) << 16); }
__device__ __forceinline__ float to_f(f16_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ bf16_t to_bf16(float f) {
    bf16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
    return r;
}
__device__ __forceinline__ f16_t to_f16(float f) {
    f16_t r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
    return r;
}
template <typename T> __device__ __forceinline__ T from_f(float f);
template <> __device__ __forceinline__ float from_f<float>(float f) { return f; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float f) { return to_bf16(f); }
template <> __device__ __forceinline__ f16_t from_f<f16_t>(float f) { return to_f16(f); }

// Max / min propagate NaN (the IR's semantics; fmaxf would drop it).
__device__ __forceinline__ float qmaxf(float a, float b) { return (a != a || b != b) ? QNAN : fmaxf(a, b); }
__device__ __forceinline__ float qminf(float a, float b) { return (a != a || b != b) ? QNAN : fminf(a, b); }

// Integer arithmetic wraps (two's complement); division by zero gives 0.
__device__ __forceinline__ int qadd(int a, int b) { return (int)((unsigned)a + (unsigned)b); }
__device__ __forceinline__ int qsub(int a, int b) { return (int)((unsigned)a - (unsigned)b); }
__device__ __forceinline__ int qmul(int a, int b) { return (int)((unsigned)a * (unsigned)b); }
__device__ __forceinline__ long long qadd(long long a, long long b) {
    return (long long)((unsigned long long)a + (unsigned long long)b);
}
__device__ __forceinline__ long long qsub(long long a, long long b) {
    return (long long)((unsigned long long)a - (unsigned long long)b);
}
__device__ __forceinline__ long long qmul(long long a, long long b) {
    return (long long)((unsigned long long)a * (unsigned long long)b);
}
template <typename T> __device__ __forceinline__ T qneg(T a) { return qsub((T)0, a); }
template <typename T> __device__ __forceinline__ T qabs(T a) { return a < 0 ? qneg(a) : a; }
template <typename T> __device__ __forceinline__ T qmax(T a, T b) { return a > b ? a : b; }
template <typename T> __device__ __forceinline__ T qmin(T a, T b) { return a < b ? a : b; }
template <typename T> __device__ __forceinline__ T qdiv(T a, T b) {
    return b == 0 ? (T)0 : (b == (T)-1 ? qneg(a) : a / b);
}
// Rounds toward negative infinity.
template <typename T> __device__ __forceinline__ T qfloordiv(T a, T b) {
    if (b == 0) return (T)0;
    if (b == (T)-1) return qneg(a);
    T q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0))) q -= 1;
    return q;
}
// Takes the sign of the divisor.
template <typename T> __device__ __forceinline__ T qrem(T a, T b) {
    if (b == 0 || b == (T)-1) return (T)0;
    T r = a % b;
    if (r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
}
// A gather index clamped into [0, dim).
template <typename T> __device__ __forceinline__ long long qclamp(T i, long long dim) {
    long long v = (long long)i;
    return v < 0 ? 0 : (v >= dim ? dim - 1 : v);
}

// Vector access for vectorised elementwise kernels: V consecutive elements (16 or 8 bytes,
// aligned) to / from V floats.
struct __align__(16) qv16_t { unsigned x, y, z, w; };
struct __align__(8) qv8_t { unsigned x, y; };
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ void unpack_bf16x2(unsigned w, float* o) {
    o[0] = __uint_as_float(w << 16);
    o[1] = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void vld8(const bf16_t* p, float* o) {
    const qv16_t u = *reinterpret_cast<const qv16_t*>(p);
    unpack_bf16x2(u.x, o); unpack_bf16x2(u.y, o + 2); unpack_bf16x2(u.z, o + 4); unpack_bf16x2(u.w, o + 6);
}
__device__ __forceinline__ void vld4(const bf16_t* p, float* o) {
    const qv8_t u = *reinterpret_cast<const qv8_t*>(p);
    unpack_bf16x2(u.x, o); unpack_bf16x2(u.y, o + 2);
}
__device__ __forceinline__ void vld4(const float* p, float* o) {
    const qv16_t u = *reinterpret_cast<const qv16_t*>(p);
    o[0] = __uint_as_float(u.x); o[1] = __uint_as_float(u.y);
    o[2] = __uint_as_float(u.z); o[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void vld8(const float* p, float* o) { vld4(p, o); vld4(p + 4, o + 4); }
__device__ __forceinline__ void vst8(bf16_t* p, const float* s) {
    qv16_t u;
    u.x = pack_bf16x2(s[0], s[1]); u.y = pack_bf16x2(s[2], s[3]);
    u.z = pack_bf16x2(s[4], s[5]); u.w = pack_bf16x2(s[6], s[7]);
    *reinterpret_cast<qv16_t*>(p) = u;
}
__device__ __forceinline__ void vst4(bf16_t* p, const float* s) {
    qv8_t u;
    u.x = pack_bf16x2(s[0], s[1]); u.y = pack_bf16x2(s[2], s[3]);
    *reinterpret_cast<qv8_t*>(p) = u;
}
__device__ __forceinline__ void vst4(float* p, const float* s) {
    qv16_t u;
    u.x = __float_as_uint(s[0]); u.y = __float_as_uint(s[1]);
    u.z = __float_as_uint(s[2]); u.w = __float_as_uint(s[3]);
    *reinterpret_cast<qv16_t*>(p) = u;
}
__device__ __forceinline__ void vst8(float* p, const float* s) { vst4(p, s); vst4(p + 4, s + 4); }
