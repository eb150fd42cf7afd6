// batchllm's fused CPU ops (AVX-512), built once per machine by batchcli.engine.native.build and called
// through ctypes with raw pointers; shapes, dtypes and contiguity are checked by the Python wrappers.
//
// Element types: E = uint16_t holds bfloat16, E = float holds float32. Every op computes in float32;
// element-wise ops round their intermediates to E exactly where the eager torch code rounds, so for
// bfloat16 they reproduce the eager model bit for bit (float32 results differ only by summation order).
//
// KV cache layout of the native path (one layer): per element type, see `Cache` below (float32:
// keys dimension-major, values standard; bfloat16: both in pairs along their product's reduction
// axis, the operand layout of AVX512-BF16 and AMX). bs is a multiple of 16.
//
// Threads: OpenMP, the same libgomp (soname libgomp.so.1) that torch has already loaded, so these ops
// share torch's thread pool and respect torch.set_num_threads through omp_set_num_threads.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <initializer_list>
#include <type_traits>

namespace {

constexpr int kTile = 16;     // keys per score vector
constexpr int kQBlock = 4;    // query vectors scored together (independent FMA chains)
constexpr int kMaxDim = 256;  // largest head_dim supported
constexpr int kPrefetch = 3;     // tiles of keys and values asked for ahead of use (blocks lie anywhere in memory)
constexpr int kAmxTiles = 4;   // 16-key tiles per step of the AMX kernel
constexpr float kRescale = 8.0f;  // how far a score may pass the running max before it moves (see softmax_step)

inline float bf16_to_f32(uint16_t x) {
    uint32_t u = static_cast<uint32_t>(x) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch does; NaN stays NaN
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

template <typename E> inline float to_f32(E x);
template <> inline float to_f32<float>(float x) { return x; }
template <> inline float to_f32<uint16_t>(uint16_t x) { return bf16_to_f32(x); }

template <typename E> inline E from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline uint16_t from_f32<uint16_t>(float x) { return f32_to_bf16(x); }

// 16 elements of E -> float32 lanes
template <typename E> inline __m512 load16(const E* p);
template <> inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <> inline __m512 load16<uint16_t>(const uint16_t* p) {
    __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// x - floor(x), in [0, 1), exactly: one vreduceps
inline __m512 fraction(__m512 x) { return _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }

// 2^x lane-wise: a degree-6 polynomial on the fraction, scaled by 2^floor(x) with vscalefps, which
// floors its exponent operand itself (overflow gives inf; x is clamped below at -126, so -inf gives a
// negligible 2^-126 rather than NaN)
inline __m512 exp2_v(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    const __m512 f = fraction(x);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, x);
}

// 2^x to ~1.4e-4 relative (a degree-3 fit of 2^f on [0, 1)): for softmax weights that are rounded to
// bf16 (8 bits) before they are used, where exp2_v's float32 accuracy buys nothing.
// No clamp: its callers' x are finite (scores of finite bf16 vectors) or masked afterwards.
inline __m512 exp2_bf16(__m512 x) {
    const __m512 f = fraction(x);
    __m512 p = _mm512_set1_ps(7.782313494317919e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.2586840700541846e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.961721143196156e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.998636940628649e-1f));
    return _mm512_scalef_ps(p, x);
}

// float32 lanes rounded as if stored in E, and stored as E
template <typename E> inline __m512 vround(__m512 x);
template <> inline __m512 vround<float>(__m512 x) { return x; }
template <> inline __m512 vround<uint16_t>(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd);
    r = _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);  // NaN stays NaN (quiet)
    r = _mm512_mask_or_epi32(r, nan, _mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xffff0000u))),
                             _mm512_set1_epi32(0x400000));
    return _mm512_castsi512_ps(r);
}

template <typename E> inline void store16(E* p, __m512 x);
template <> inline void store16<float>(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
template <> inline void store16<uint16_t>(uint16_t* p, __m512 x) {  // x already rounded (vround)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(x), 16)));
}


// ---------------------------------------------------------------------------------------------
// RMSNorm with the residual add: x += delta (if any, rounded to E), out = w * E(x * rsqrt(mean(x^2) + eps)).
// dim is a multiple of 16.

template <typename E>
void add_rms_norm(E* x, const E* delta, const E* w, E* out, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        E* xr = x + r * dim;
        __m512 sum = _mm512_setzero_ps();
        for (int64_t i = 0; i < dim; i += 16) {
            __m512 v = load16<E>(xr + i);
            if (delta != nullptr) {
                v = vround<E>(_mm512_add_ps(v, load16<E>(delta + r * dim + i)));
                store16<E>(xr + i, v);
            }
            sum = _mm512_fmadd_ps(v, v, sum);
        }
        const __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sum) / static_cast<float>(dim) + eps));
        E* o = out + r * dim;
        for (int64_t i = 0; i < dim; i += 16) {
            const __m512 normed = vround<E>(_mm512_mul_ps(load16<E>(xr + i), inv));
            store16<E>(o + i, vround<E>(_mm512_mul_ps(load16<E>(w + i), normed)));
        }
    }
}

// out = E(silu(gate)) * up, rounded; gate_up rows are [gate (inter) | up (inter)]; inter % 16 == 0
template <typename E>
void silu_mul(const E* gate_up, E* out, int64_t rows, int64_t inter) {
    const __m512 minus_log2e = _mm512_set1_ps(-1.4426950408889634f), one = _mm512_set1_ps(1.0f);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const E* g = gate_up + r * 2 * inter;
        E* o = out + r * inter;
        for (int64_t i = 0; i < inter; i += 16) {
            const __m512 gv = load16<E>(g + i);
            const __m512 e = exp2_v(_mm512_mul_ps(gv, minus_log2e));  // exp(-g)
            const __m512 s = vround<E>(_mm512_div_ps(gv, _mm512_add_ps(one, e)));
            store16<E>(o + i, vround<E>(_mm512_mul_ps(s, load16<E>(g + inter + i))));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The native KV cache layout of one layer (see the header). Per 16-key tile of one KV head, the
// `Cache` of an element type says where its keys and values start and how rows step through them.
//  - float32: keys [blocks, n_kv, d, bs] (dimension-major: 16 keys of one dimension are one vector),
//    values [blocks, bs, n_kv, d].
//  - bfloat16: keys [blocks, n_kv, d/2, bs, 2] and values [blocks, n_kv, bs/2, d, 2]: pairs along the
//    dot product's reduction axis, the operand layout of both vdpbf16ps and AMX's tdpbf16ps, so a
//    tile is read in place by either (keys: d/2 rows of 16 keys x 2 dims; values: bs/2 rows of
//    d dims x 2 keys).
template <typename E> struct Cache;

template <> struct Cache<float> {
    static int64_t key(int64_t block, int64_t head, int64_t dim, int64_t tok, int64_t n_kv, int64_t d, int64_t bs) {
        return ((block * n_kv + head) * d + dim) * bs + tok;
    }
    static int64_t value(int64_t block, int64_t head, int64_t dim, int64_t tok, int64_t n_kv, int64_t d, int64_t bs) {
        return ((block * bs + tok) * n_kv + head) * d + dim;
    }
};

template <> struct Cache<uint16_t> {
    static int64_t key(int64_t block, int64_t head, int64_t dim, int64_t tok, int64_t n_kv, int64_t d, int64_t bs) {
        return (((block * n_kv + head) * (d / 2) + dim / 2) * bs + tok) * 2 + dim % 2;
    }
    static int64_t value(int64_t block, int64_t head, int64_t dim, int64_t tok, int64_t n_kv, int64_t d, int64_t bs) {
        return (((block * n_kv + head) * (bs / 2) + tok / 2) * d + dim) * 2 + tok % 2;
    }
};

// RoPE on q and k of a fused qkv row [(H + 2 n_kv), d], halves rotated as in transformers, each
// product and sum rounded to E as the eager code does; q goes to q_out [T, H, d], k (rotated) and v
// to their cache slots in the native layout. d / 2 is a multiple of 16.
template <typename E>
void rope_store_kv(const E* qkv, const E* cos_t, const E* sin_t, const int64_t* positions, const int64_t* slots,
                   E* q_out, E* k_cache, E* v_cache, int64_t tokens, int64_t n_q, int64_t n_kv, int64_t d,
                   int64_t block_size) {
    const int64_t half = d / 2;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
        const E* row = qkv + t * (n_q + 2 * n_kv) * d;
        const E* c = cos_t + positions[t] * half;
        const E* s = sin_t + positions[t] * half;
        const int64_t block = slots[t] / block_size, off = slots[t] % block_size;
        for (int64_t h = 0; h < n_q + n_kv; ++h) {
            const E* x = row + h * d;
            for (int64_t i = 0; i < half; i += 16) {
                const __m512 x1 = load16<E>(x + i), x2 = load16<E>(x + half + i);
                const __m512 cv = load16<E>(c + i), sv = load16<E>(s + i);
                const __m512 lo = vround<E>(_mm512_sub_ps(vround<E>(_mm512_mul_ps(x1, cv)), vround<E>(_mm512_mul_ps(x2, sv))));
                const __m512 hi = vround<E>(_mm512_add_ps(vround<E>(_mm512_mul_ps(x2, cv)), vround<E>(_mm512_mul_ps(x1, sv))));
                if (h < n_q) {
                    E* qo = q_out + (t * n_q + h) * d;
                    store16<E>(qo + i, lo);
                    store16<E>(qo + half + i, hi);
                } else {
                    alignas(64) E tmp[32];
                    store16<E>(tmp, lo);
                    store16<E>(tmp + 16, hi);
                    for (int j = 0; j < 16; ++j) {
                        k_cache[Cache<E>::key(block, h - n_q, i + j, off, n_kv, d, block_size)] = tmp[j];
                        k_cache[Cache<E>::key(block, h - n_q, half + i + j, off, n_kv, d, block_size)] = tmp[16 + j];
                    }
                }
            }
        }
        const E* v = row + (n_q + n_kv) * d;
        for (int64_t h = 0; h < n_kv; ++h)
            for (int64_t i = 0; i < d; ++i) v_cache[Cache<E>::value(block, h, i, off, n_kv, d, block_size)] = v[h * d + i];
    }
}

// ---------------------------------------------------------------------------------------------
// Paged attention over a chunk's key list (its shared segments' blocks, then its private blocks).
// Row i of a chunk (0-based) sees keys 0 .. nkeys - q_len + i: every segment key and its private
// history causally. One work item = (chunk, kv head, a block of the chunk's rows); the G query heads
// of the kv head are stacked, so every key tile is loaded once for all of them.
//
// Three ways to compute a tile, chosen once per call by the caller (by CPU flags, see ops.py):
//  - FmaTiles: float32 FMAs (float32 caches in place; bfloat16 ones converted per tile);
//  - DotTiles: AVX512-BF16 pair dot products on the bfloat16 cache in place, 4 query vectors a pass;
//  - AMX (attend_keys_amx): tdpbf16ps on 16 query vectors x 16 keys, the cache read in place as the
//    B operand; the online softmax between the two products stays in AVX-512.

enum Kernel : int64_t { kFma = 0, kDot = 1, kAmx = 2 };

struct Item {
    int32_t group, kv_head, row0, rows;  // rows row0 .. row0 + rows - 1 of every chunk of the group
};

template <typename E>
struct AttnArgs {
    const E* q;        // [T, H, d]
    const E* k_cache;  // native layout (Cache<E>)
    const E* v_cache;
    E* out;            // [T, H, d]
    const Item* items;
    int64_t n_items;
    int64_t max_vectors;              // most query vectors (rows x heads of a group) of any item
    const int64_t* group_chunks_start;  // [G + 1]: the group's chunks are group_chunks[start[g]:start[g+1]]
    const int32_t* group_chunks;
    const int64_t* shared_start;      // [G + 1]: the group's shared key blocks (all visible to all its rows)
    const int32_t* shared_blocks;
    const int32_t* chunk_row;         // [S]: first flat row
    const int32_t* chunk_qlen;        // [S]
    const int32_t* chunk_ctx;         // [S]: private keys, this step's included (row i sees ctx - qlen + i + 1)
    const int64_t* private_start;     // [S + 1]: the chunk's private key blocks
    const int32_t* private_blocks;
    int64_t n_q, n_kv, d, block_size;
    float scale;

    const E* key_tile(int64_t block, int64_t head, int64_t off) const {
        return k_cache + Cache<E>::key(block, head, 0, off, n_kv, d, block_size);
    }
    const E* value_tile(int64_t block, int64_t head, int64_t off) const {
        return v_cache + Cache<E>::value(block, head, 0, off, n_kv, d, block_size);
    }
};

// Scratch of one thread. Query vectors are padded to a multiple of 16 (+16) rows, so a 16-row AMX
// tile of the running output never runs past the buffer.
struct Scratch {
    float* q;    // [M, d]: float32 queries, scaled to log2 units (FmaTiles)
    float* acc;  // [M, d]: running output
    float* mx;   // [M]: running max of the scores (log2 units)
    float* den;  // [M, 16]: running softmax denominator, per lane
    float* kbuf;  // FmaTiles on bfloat16: the tile's keys, float32 [d, 16]
    float* vbuf;  // FmaTiles on bfloat16: the tile's values, float32 [16, d]
    float* sbuf;  // AMX: a step's scores [kAmxTiles, 16, 16]
    uint16_t* qtile;  // AMX: 16 query vectors, bf16 [16, d]
    uint16_t* ptile;  // AMX: their softmax weights, bf16 [kAmxTiles, 16, 16]
    int64_t* limit;      // [M]: keys of the current key list each query vector sees
    const void** qptr;   // [M]: each query vector in the q tensor
};

// The running output of a block's query vectors, chunks c0 .. c0 + 16 NC of d, rescaled by alpha (null: all 1).
template <int NC>
inline void load_output(__m512 (*o)[NC], const float* acc, int64_t d, int64_t c0, int64_t mn, const float* alpha) {
    for (int j = 0; j < kQBlock; ++j)
        for (int c = 0; c < NC; ++c)
            o[j][c] = j >= mn ? _mm512_setzero_ps()
                      : alpha ? _mm512_mul_ps(_mm512_loadu_ps(acc + j * d + c0 + 16 * c), _mm512_set1_ps(alpha[j]))
                              : _mm512_loadu_ps(acc + j * d + c0 + 16 * c);
}

// Tiles computed with float32 FMAs: float32 caches read in place, bfloat16 ones converted per tile.
template <typename E>
struct FmaTiles {
    const float *kf, *vf;
    int64_t kstride, vstride;

    void load(const E* kt, const E* vt, int64_t d, int64_t bs, int64_t v_row, const Scratch& w) {
        if constexpr (sizeof(E) == sizeof(float)) {
            kf = reinterpret_cast<const float*>(kt), kstride = bs;
            vf = reinterpret_cast<const float*>(vt), vstride = v_row;
        } else {  // pairs: a key row holds dims (2i, 2i + 1) of 16 keys, a value row keys (2k, 2k + 1) of d dims
            const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
            for (int64_t i = 0; i < d / 2; ++i) {
                const __m512i pairs = _mm512_loadu_si512(kt + 2 * i * bs);
                _mm512_store_ps(w.kbuf + 2 * i * kTile, _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16)));
                _mm512_store_ps(w.kbuf + (2 * i + 1) * kTile, _mm512_castsi512_ps(_mm512_and_si512(pairs, high)));
            }
            for (int64_t k = 0; k < kTile / 2; ++k)
                for (int64_t c = 0; c < d; c += 16) {
                    const __m512i pairs = _mm512_loadu_si512(vt + (k * d + c) * 2);
                    _mm512_storeu_ps(w.vbuf + 2 * k * d + c, _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16)));
                    _mm512_storeu_ps(w.vbuf + (2 * k + 1) * d + c, _mm512_castsi512_ps(_mm512_and_si512(pairs, high)));
                }
            kf = w.kbuf, kstride = kTile, vf = w.vbuf, vstride = d;
        }
    }

    // s[j] = scores of query m0 + j against the tile's 16 keys, in log2 units
    void scores(const Scratch& w, const E* const*, int64_t m0, int64_t mn, int64_t d, float, __m512* s) const {
        const float* qb = w.q + m0 * d;
        for (int j = 0; j < kQBlock; ++j) s[j] = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; ++i) {
            const __m512 kv = _mm512_loadu_ps(kf + i * kstride);
            for (int j = 0; j < kQBlock; ++j) s[j] = _mm512_fmadd_ps(_mm512_set1_ps(qb[(j < mn ? j : 0) * d + i]), kv, s[j]);
        }
    }

    // acc[j] = acc[j] * alpha[j] (alpha null: all 1) + sum_key p[j][key] * v[key], for NC 16-float chunks of d from c0
    template <int NC>
    void accumulate(float* acc, int64_t d, int64_t c0, int64_t mn, const float* alpha, const float* p) const {
        __m512 o[kQBlock][NC];
        load_output<NC>(o, acc, d, c0, mn, alpha);
        for (int key = 0; key < kTile; ++key)
            for (int c = 0; c < NC; ++c) {
                const __m512 v = _mm512_loadu_ps(vf + key * vstride + c0 + 16 * c);
                for (int j = 0; j < kQBlock; ++j) o[j][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[j * kTile + key]), v, o[j][c]);
            }
        for (int j = 0; j < mn; ++j)
            for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc + j * d + c0 + 16 * c, o[j][c]);
    }
};

#ifdef __AVX512BF16__
// Tiles of the bfloat16 cache computed with bf16 pair dot products (vdpbf16ps: 32 products a
// lane-pair per instruction, twice the FMA rate), read in place: the cache's pair layout is the
// instruction's operand layout. Queries and the softmax weights are bf16 (the weights rounded from
// float32, as bf16 flash kernels do), every sum is float32.
struct DotTiles {
    const uint16_t* kt;  // d/2 rows of [16 keys][2 dims], at stride 2 bs
    const uint16_t* vt;  // 8 rows of [d dims][2 keys], at stride 2 d
    int64_t k_row;

    void load(const uint16_t* k, const uint16_t* v, int64_t, int64_t bs, int64_t, const Scratch&) {
        kt = k, vt = v, k_row = 2 * bs;
    }

    void scores(const Scratch&, const uint16_t* const* q, int64_t, int64_t, int64_t d, float qscale, __m512* s) const {
        for (int j = 0; j < kQBlock; ++j) s[j] = _mm512_setzero_ps();
        for (int64_t i = 0; i < d / 2; ++i) {
            const __m512bh kv = (__m512bh)_mm512_loadu_si512(kt + i * k_row);
            for (int j = 0; j < kQBlock; ++j) {
                int32_t pair;
                memcpy(&pair, q[j] + 2 * i, 4);
                s[j] = _mm512_dpbf16_ps(s[j], (__m512bh)_mm512_set1_epi32(pair), kv);
            }
        }
        for (int j = 0; j < kQBlock; ++j) s[j] = _mm512_mul_ps(s[j], _mm512_set1_ps(qscale));
    }

    template <int NC>
    void accumulate(float* acc, int64_t d, int64_t c0, int64_t mn, const float* alpha, const float* p) const {
        alignas(64) uint16_t pb[kQBlock][kTile];
        for (int j = 0; j < kQBlock; ++j)
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb[j]), (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(p + j * kTile)));
        __m512 o[kQBlock][NC];
        load_output<NC>(o, acc, d, c0, mn, alpha);
        for (int k = 0; k < kTile / 2; ++k)
            for (int c = 0; c < NC; ++c) {
                const __m512bh v = (__m512bh)_mm512_loadu_si512(vt + (k * d + c0 + 16 * c) * 2);
                for (int j = 0; j < kQBlock; ++j) {
                    int32_t pair;
                    memcpy(&pair, pb[j] + 2 * k, 4);
                    o[j][c] = _mm512_dpbf16_ps(o[j][c], (__m512bh)_mm512_set1_epi32(pair), v);
                }
            }
        for (int j = 0; j < mn; ++j)
            for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc + j * d + c0 + 16 * c, o[j][c]);
    }
};
#endif

// Ask for a tile's keys and values ahead of use: a decode's tiles are too small to hide a miss to
// memory behind their arithmetic (measured: a 128-decode step 4x slower with its KV in memory than in
// cache without this). Each layout's tile is d * 16 elements of keys and of values.
template <typename E>
inline void prefetch_tile(const AttnArgs<E>& a, int64_t block, int64_t head, int64_t off) {
    constexpr int64_t line = 64 / sizeof(E);
    const E* kt = a.key_tile(block, head, off);
    const E* vt = a.value_tile(block, head, off);
    if constexpr (sizeof(E) == sizeof(float)) {
        for (int64_t i = 0; i < a.d; ++i) _mm_prefetch(reinterpret_cast<const char*>(kt + i * a.block_size), _MM_HINT_T0);
        for (int64_t key = 0; key < kTile; ++key)
            for (int64_t c = 0; c < a.d; c += line)
                _mm_prefetch(reinterpret_cast<const char*>(vt + key * a.n_kv * a.d + c), _MM_HINT_T0);
    } else {  // key rows of 64 bytes at stride 2 bs; the values' 8 rows are one contiguous run
        for (int64_t i = 0; i < a.d / 2; ++i) _mm_prefetch(reinterpret_cast<const char*>(kt + 2 * i * a.block_size), _MM_HINT_T0);
        for (int64_t c = 0; c < kTile * a.d; c += line) _mm_prefetch(reinterpret_cast<const char*>(vt + c), _MM_HINT_T0);
    }
}

// One online-softmax step for query vector m over a tile of 16 scores s (log2 units), of which
// the first `visible` count: updates the running max, the per-lane denominator, and returns the
// weights (0 beyond `visible`) with the factor alpha the vector's running output must be scaled by.
inline __m512 softmax_step(const Scratch& w, int64_t m, __m512 s, int64_t visible, float* alpha, bool* rescale) {
    *alpha = 1.0f;
    if (visible <= 0) return _mm512_setzero_ps();
    if (visible > kTile) visible = kTile;
    const __mmask16 live = static_cast<__mmask16>((1u << visible) - 1u);
    // The reference max moves only when a score passes it by kRescale (log2 units): the weights stay
    // <= 2^kRescale, and most tiles need no horizontal max at all.
    if (_mm512_mask_cmp_ps_mask(live, s, _mm512_set1_ps(w.mx[m] + kRescale), _CMP_GT_OQ)) {
        const float tile_max = _mm512_mask_reduce_max_ps(live, s);
        *alpha = exp2f(w.mx[m] - tile_max);  // 0 on the vector's first keys (mx = -inf)
        w.mx[m] = tile_max;
        *rescale = true;
    }
    const __m512 p = _mm512_maskz_mov_ps(live, exp2_v(_mm512_sub_ps(s, _mm512_set1_ps(w.mx[m]))));
    float* den = w.den + m * kTile;  // per lane: summed across lanes once, at the end
    _mm512_store_ps(den, _mm512_fmadd_ps(_mm512_load_ps(den), _mm512_set1_ps(*alpha), p));
    return p;
}

// Online softmax of query vectors [m_begin, m_end) over one key list (a group's shared blocks, or a
// chunk's private blocks), vector m seeing its first limit[m] keys; 4 vectors share every tile load.
template <typename E, typename Tiles>
void attend_keys(const AttnArgs<E>& a, const Scratch& w, Tiles& tiles, const int32_t* blocks, int64_t kv_head,
                 int64_t m_begin, int64_t m_end) {
    const int64_t d = a.d, bs = a.block_size, v_row = a.n_kv * d;
    const float qscale = a.scale * 1.4426950408889634f;  // scores in log2 units: exp2 below
    const E* const* qp = reinterpret_cast<const E* const*>(w.qptr);
    int64_t last_key = 0;
    for (int64_t m = m_begin; m < m_end; ++m) last_key = w.limit[m] > last_key ? w.limit[m] : last_key;
    alignas(64) float p[kQBlock * kTile];
    float alpha[kQBlock];
    const E* q_of[kQBlock];
    auto prefetch = [&](int64_t k) {  // tile k's lines, asked for kPrefetch tiles ahead of their use
        if (k < last_key) prefetch_tile(a, blocks[k / bs], kv_head, k % bs);
    };
    for (int64_t t = 0; t < kPrefetch; ++t) prefetch(t * kTile);
    for (int64_t k0 = 0; k0 < last_key; k0 += kTile) {
        const int64_t block = blocks[k0 / bs], off = k0 % bs;
        prefetch(k0 + kPrefetch * kTile);
        tiles.load(a.key_tile(block, kv_head, off), a.value_tile(block, kv_head, off), d, bs, v_row, w);
        for (int64_t m0 = m_begin; m0 < m_end; m0 += kQBlock) {
            const int64_t mn = m_end - m0 < kQBlock ? m_end - m0 : kQBlock;
            for (int j = 0; j < kQBlock; ++j) q_of[j] = qp[m0 + (j < mn ? j : 0)];
            __m512 s[kQBlock];
            tiles.scores(w, q_of, m0, mn, d, qscale, s);
            bool rescale = false;
            for (int j = 0; j < kQBlock; ++j)
                _mm512_store_ps(p + j * kTile, softmax_step(w, m0 + j, s[j], j < mn ? w.limit[m0 + j] - k0 : 0,
                                                            alpha + j, &rescale));
            float* acc = w.acc + m0 * d;
            int64_t c0 = 0;
            const float* scale_by = rescale ? alpha : nullptr;  // nullptr: every alpha is 1
            for (; c0 + 64 <= d; c0 += 64) tiles.template accumulate<4>(acc, d, c0, mn, scale_by, p);
            if (c0 < d) tiles.template accumulate<2>(acc, d, c0, mn, scale_by, p);  // d % 32 == 0
        }
    }
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// AMX tile registers of the attention kernel (one palette, loaded per thread on entry); macros, since
// the tile intrinsics paste the register number into their assembly.
#define kQ 0   // scores phase: 16 query vectors x 32 dims (bf16)
#define kK 1   //   16 dim pairs x 16 keys x 2 (bf16)
#define kS 2   //   16 vectors x 16 scores (float32), two registers alternating
#define kS2 5
#define kP 3   // output phase: 16 vectors x 16 weights (bf16), two registers alternating
#define kP2 7
#define kV 4   //   8 key pairs x 16 dims x 2 (bf16), two registers alternating
#define kV2 6
// and the running output, 16 vectors x 64 dims (float32), in registers 0, 1, 2, 5 (free then)

struct alignas(64) TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

inline void load_tile_config() {
    TileConfig cfg{};
    cfg.palette = 1;
    auto set = [&](int t, int rows, int colsb) { cfg.rows[t] = static_cast<uint8_t>(rows), cfg.colsb[t] = static_cast<uint16_t>(colsb); };
    for (int t : {kQ, kK, kS, kS2}) set(t, 16, 64);  // 64-byte rows of 16 rows: also the output's registers
    for (int t : {kP, kP2}) set(t, 16, 32);
    for (int t : {kV, kV2}) set(t, 8, 64);
    _tile_loadconfig(&cfg);
}

// S = Q K^T of one 16-key tile into tile register S (d/32 tdpbf16ps; the key tile read in place).
#define AMX_SCORES(S, KEYS)                                                    \
    do {                                                                       \
        _tile_zero(S);                                                         \
        for (int64_t c = 0; c < d / 32; ++c) {                                 \
            _tile_loadd(kQ, w.qtile + 32 * c, 2 * d);                          \
            _tile_loadd(kK, (KEYS) + 32 * c * bs, 4 * bs); /* dim pairs 16c.. */ \
            _tile_dpbf16ps(S, kQ, kK);                                         \
        }                                                                      \
    } while (0)

// O += P V of one 16-key tile for 32 (or, `wide`, 64) output dims held in registers 0, 1 (2, 5):
// four independent accumulations, so no product waits on the one before it.
#define AMX_OUTPUT(P, PT, VT, WIDE)                      \
    do {                                                 \
        _tile_loadd(P, PT, 2 * kTile);                   \
        _tile_loadd(kV, VT, 4 * d);                      \
        _tile_dpbf16ps(0, P, kV);                        \
        _tile_loadd(kV2, (VT) + 32, 4 * d);              \
        _tile_dpbf16ps(1, P, kV2);                       \
        if (WIDE) {                                      \
            _tile_loadd(kV, (VT) + 64, 4 * d);           \
            _tile_dpbf16ps(2, P, kV);                    \
            _tile_loadd(kV2, (VT) + 96, 4 * d);          \
            _tile_dpbf16ps(5, P, kV2);                   \
        }                                                \
    } while (0)

// Online softmax of query vectors [m_begin, m_end) over one key list on AMX tiles, 16 vectors at a
// time, 64 keys (kAmxTiles tiles of 16) a step: S = Q K^T per key tile, the softmax step of every
// vector over the step's keys in AVX-512, then O += P V per 32 output dims, the running output
// loaded into four tiles once per step and every key tile's product added before it is stored back.
// A product's result comes late, so the score registers alternate: a tile's scores are asked for
// before the previous tile's are stored.
void attend_keys_amx(const AttnArgs<uint16_t>& a, const Scratch& w, const int32_t* blocks, int64_t kv_head,
                     int64_t m_begin, int64_t m_end) {
    constexpr int64_t kStep = kAmxTiles * kTile;
    const int64_t d = a.d, bs = a.block_size;
    const float qscale = a.scale * 1.4426950408889634f;
    for (int64_t m0 = m_begin; m0 < m_end; m0 += 16) {
        const int64_t mn = m_end - m0 < 16 ? m_end - m0 : 16;
        int64_t last_key = 0;
        for (int64_t j = 0; j < mn; ++j) {
            last_key = w.limit[m0 + j] > last_key ? w.limit[m0 + j] : last_key;
            memcpy(w.qtile + j * d, w.qptr[m0 + j], sizeof(uint16_t) * d);
        }
        memset(w.qtile + mn * d, 0, sizeof(uint16_t) * (16 - mn) * d);
        for (int64_t t = 0; t < kAmxTiles; ++t)  // padding rows weigh nothing
            memset(w.ptile + (t * 16 + mn) * kTile, 0, sizeof(uint16_t) * (16 - mn) * kTile);
        float thr[16];  // per vector: the unscaled score that would pass the running max by kRescale
        for (int64_t j = 0; j < mn; ++j) thr[j] = (w.mx[m0 + j] + kRescale) / qscale;
        float* acc = w.acc + m0 * d;
        auto keys_at = [&](int64_t k) { return a.key_tile(blocks[k / bs], kv_head, k % bs); };
        auto prefetch = [&](int64_t k) { if (k < last_key) prefetch_tile(a, blocks[k / bs], kv_head, k % bs); };
        for (int64_t t = 0; t < kStep; t += kTile) prefetch(t);
        for (int64_t k0 = 0; k0 < last_key; k0 += kStep) {
            const int64_t tiles = (last_key - k0 + kTile - 1) / kTile < kAmxTiles ? (last_key - k0 + kTile - 1) / kTile : kAmxTiles;
            for (int64_t t = 0; t < kStep; t += kTile) prefetch(k0 + kStep + t);
            AMX_SCORES(kS, keys_at(k0));
            for (int64_t t = 1; t <= tiles; ++t) {  // store tile t - 1 while tile t's products run
                if (t % 2) {
                    if (t < tiles) AMX_SCORES(kS2, keys_at(k0 + t * kTile));
                    _tile_stored(kS, w.sbuf + (t - 1) * kTile * kTile, 64);
                } else {
                    if (t < tiles) AMX_SCORES(kS, keys_at(k0 + t * kTile));
                    _tile_stored(kS2, w.sbuf + (t - 1) * kTile * kTile, 64);
                }
            }
            bool rescale = false;
            float alpha[16];
            for (int64_t j = 0; j < mn; ++j) {
                const int64_t visible = w.limit[m0 + j] - k0;
                alpha[j] = 1.0f;
                __mmask16 live[kAmxTiles];
                __m512 s[kAmxTiles];
                bool over = false;
                for (int64_t t = 0; t < tiles; ++t) {
                    const int64_t v = visible - t * kTile;
                    live[t] = v >= kTile ? 0xffff : v <= 0 ? 0 : static_cast<__mmask16>((1u << v) - 1u);
                    s[t] = _mm512_load_ps(w.sbuf + (t * 16 + j) * kTile);  // unscaled: compared with thr as is
                    over |= _mm512_mask_cmp_ps_mask(live[t], s[t], _mm512_set1_ps(thr[j]), _CMP_GT_OQ) != 0;
                }
                float* mx = w.mx + m0 + j;
                if (over) {  // the running max moves (see softmax_step)
                    __m512 top = _mm512_set1_ps(-INFINITY);
                    for (int64_t t = 0; t < tiles; ++t) top = _mm512_mask_max_ps(top, live[t], top, s[t]);
                    const float step_max = _mm512_reduce_max_ps(top) * qscale;
                    alpha[j] = exp2f(*mx - step_max);
                    *mx = step_max;
                    thr[j] = (step_max + kRescale) / qscale;
                    rescale = true;
                }
                __m512 sum = _mm512_setzero_ps();
                for (int64_t t = 0; t < tiles; ++t) {
                    const __m512 p = _mm512_maskz_mov_ps(live[t], exp2_bf16(_mm512_fmsub_ps(s[t], _mm512_set1_ps(qscale), _mm512_set1_ps(*mx))));
                    sum = _mm512_add_ps(sum, p);
                    _mm256_store_si256(reinterpret_cast<__m256i*>(w.ptile + (t * 16 + j) * kTile), (__m256i)_mm512_cvtneps_pbh(p));
                }
                float* den = w.den + (m0 + j) * kTile;
                _mm512_store_ps(den, _mm512_fmadd_ps(_mm512_load_ps(den), _mm512_set1_ps(alpha[j]), sum));
            }
            if (rescale)
                for (int64_t j = 0; j < mn; ++j)
                    if (alpha[j] != 1.0f)
                        for (int64_t c = 0; c < d; c += 16)
                            _mm512_storeu_ps(acc + j * d + c, _mm512_mul_ps(_mm512_loadu_ps(acc + j * d + c), _mm512_set1_ps(alpha[j])));
            for (int64_t c0 = 0; c0 < d; c0 += 64) {  // 64 output dims (32 where d % 64 == 32) at a time
                const bool wide = d - c0 >= 64;
                _tile_loadd(0, acc + c0, 4 * d);
                _tile_loadd(1, acc + c0 + 16, 4 * d);
                if (wide) {
                    _tile_loadd(2, acc + c0 + 32, 4 * d);
                    _tile_loadd(5, acc + c0 + 48, 4 * d);
                }
                for (int64_t t = 0; t < tiles; ++t) {
                    const int64_t k = k0 + t * kTile;
                    const uint16_t* vt = a.value_tile(blocks[k / bs], kv_head, k % bs) + 2 * c0;
                    const uint16_t* pt = w.ptile + t * 16 * kTile;
                    if (t % 2 == 0) AMX_OUTPUT(kP, pt, vt, wide);
                    else AMX_OUTPUT(kP2, pt, vt, wide);
                }
                _tile_stored(0, acc + c0, 4 * d);
                _tile_stored(1, acc + c0 + 16, 4 * d);
                if (wide) {
                    _tile_stored(2, acc + c0 + 32, 4 * d);
                    _tile_stored(5, acc + c0 + 48, 4 * d);
                }
            }
        }
    }
}
#undef AMX_SCORES
#undef AMX_OUTPUT

// Ask Linux for the AMX tile data state once (arch_prctl ARCH_REQ_XCOMP_PERM, feature 18), then check
// that the process holds it: without it the first tile instruction kills the process.
#include <sys/syscall.h>
#include <unistd.h>
bool amx_permitted() {
    constexpr int kReqPerm = 0x1023, kGetPerm = 0x1022, kTileData = 18;
    syscall(SYS_arch_prctl, kReqPerm, kTileData);
    uint64_t granted = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &granted) != 0) return false;
    return (granted >> kTileData) & 1u;
}
#endif

// One work item: the query vectors of the group's rows for one KV head attend first to the group's
// shared keys, all together (each shared tile loaded once for every member), then each chunk's
// vectors continue over that chunk's private keys, causally. The softmax state carries across both.
template <typename E, typename Tiles>
void attend_item(const AttnArgs<E>& a, const Item& it, const Scratch& w, Kernel kernel) {
    const int64_t d = a.d, group = a.n_q / a.n_kv;
    const int64_t c_begin = a.group_chunks_start[it.group], c_end = a.group_chunks_start[it.group + 1];
    int64_t m = 0;
    for (int64_t ci = c_begin; ci < c_end; ++ci) {
        const int64_t c = a.group_chunks[ci];
        for (int64_t r = it.row0; r < it.row0 + it.rows; ++r)
            for (int64_t g = 0; g < group; ++g, ++m) {
                const E* src = a.q + ((a.chunk_row[c] + r) * a.n_q + it.kv_head * group + g) * d;
                w.qptr[m] = src;
                if (kernel == kFma)
                    for (int64_t i = 0; i < d; ++i) w.q[m * d + i] = to_f32(src[i]) * a.scale * 1.4426950408889634f;
                w.mx[m] = -INFINITY;
                _mm512_store_ps(w.den + m * kTile, _mm512_setzero_ps());
            }
    }
    const int64_t m_count = m;
    memset(w.acc, 0, sizeof(float) * (m_count + 16) * d);
    Tiles tiles;
    auto attend = [&](const int32_t* blocks, int64_t m_begin, int64_t m_end) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
        if constexpr (std::is_same_v<E, uint16_t>)
            if (kernel == kAmx) return attend_keys_amx(a, w, blocks, it.kv_head, m_begin, m_end);
#endif
        attend_keys<E, Tiles>(a, w, tiles, blocks, it.kv_head, m_begin, m_end);
    };
    const int64_t shared_keys = (a.shared_start[it.group + 1] - a.shared_start[it.group]) * a.block_size;
    if (shared_keys > 0) {
        for (int64_t i = 0; i < m_count; ++i) w.limit[i] = shared_keys;
        attend(a.shared_blocks + a.shared_start[it.group], 0, m_count);
    }
    m = 0;
    for (int64_t ci = c_begin; ci < c_end; ++ci) {
        const int64_t c = a.group_chunks[ci], m_first = m;
        for (int64_t r = it.row0; r < it.row0 + it.rows; ++r)
            for (int64_t g = 0; g < group; ++g, ++m) w.limit[m] = a.chunk_ctx[c] - a.chunk_qlen[c] + r + 1;
        attend(a.private_blocks + a.private_start[c], m_first, m);
    }
    for (int64_t i = 0; i < m_count; ++i) {
        E* dst = const_cast<E*>(static_cast<const E*>(w.qptr[i])) - a.q + a.out;  // same row of out
        const float inv = 1.0f / _mm512_reduce_add_ps(_mm512_load_ps(w.den + i * kTile));
        for (int64_t k = 0; k < d; ++k) dst[k] = from_f32<E>(w.acc[i * d + k] * inv);
    }
}

template <typename E, typename Tiles>
void paged_attention(const AttnArgs<E>& a, Kernel kernel) {
    const int64_t vectors = (a.max_vectors + 15) / 16 * 16 + 16, d = a.d;
#pragma omp parallel
    {
        // floats: q, acc, kbuf, vbuf, den, sbuf, mx; then bf16 qtile and ptile; then limit, qptr
        const size_t floats = 2 * vectors * d + 2 * kTile * d + kTile * vectors + kAmxTiles * kTile * kTile + vectors;
        const size_t halves = 16 * d + kAmxTiles * 16 * kTile;
        const size_t bytes = (sizeof(float) * floats + 2 * halves + 16 * vectors + 63) / 64 * 64;
        char* mem = static_cast<char*>(aligned_alloc(64, bytes));
        float* f = reinterpret_cast<float*>(mem);
        Scratch w{};
        w.q = f;  // every buffer below starts 64-byte aligned: vectors % 16 == 0 and d % 32 == 0
        w.acc = f + vectors * d;
        w.kbuf = f + 2 * vectors * d;
        w.vbuf = w.kbuf + kTile * d;
        w.den = w.vbuf + kTile * d;
        w.sbuf = w.den + kTile * vectors;
        w.mx = w.sbuf + kAmxTiles * kTile * kTile;
        w.qtile = reinterpret_cast<uint16_t*>(w.mx + vectors);
        w.ptile = w.qtile + 16 * d;
        w.limit = reinterpret_cast<int64_t*>(w.ptile + kAmxTiles * 16 * kTile);
        w.qptr = reinterpret_cast<const void**>(w.limit + vectors);
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
        if (kernel == kAmx) load_tile_config();  // per thread; oneDNN's kernels load their own between calls
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < a.n_items; ++i) attend_item<E, Tiles>(a, a.items[i], w, kernel);
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
        if (kernel == kAmx) _tile_release();
#endif
        free(mem);
    }
}

template <typename E>
void paged_attention(const AttnArgs<E>& a, int64_t kernel) {
#ifdef __AVX512BF16__
    if constexpr (std::is_same_v<E, uint16_t>)
        if (kernel != kFma) return paged_attention<E, DotTiles>(a, static_cast<Kernel>(kernel));
#endif
    paged_attention<E, FmaTiles<E>>(a, kFma);
}

}  // namespace

// The attention kernels this build can run for bfloat16: bit kDot set with AVX512-BF16, bit kAmx with
// AMX (compiled in and the tile data permission granted). float32 always runs kFma.
extern "C" int64_t batchllm_attention_kernels() {
    int64_t kernels = 1 << kFma;
#ifdef __AVX512BF16__
    kernels |= 1 << kDot;
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    if (amx_permitted()) kernels |= 1 << kAmx;
#endif
    return kernels;
}

#define BATCHLLM_EXPORT(SUFFIX, E)                                                                          \
    extern "C" void batchllm_add_rms_norm_##SUFFIX(E* x, const E* delta, const E* w, E* out, int64_t rows,  \
                                                   int64_t dim, float eps) {                                \
        add_rms_norm<E>(x, delta, w, out, rows, dim, eps);                                                  \
    }                                                                                                       \
    extern "C" void batchllm_silu_mul_##SUFFIX(const E* gate_up, E* out, int64_t rows, int64_t inter) {     \
        silu_mul<E>(gate_up, out, rows, inter);                                                             \
    }                                                                                                       \
    extern "C" void batchllm_rope_store_kv_##SUFFIX(const E* qkv, const E* cos_t, const E* sin_t,           \
                                                    const int64_t* positions, const int64_t* slots,         \
                                                    E* q_out, E* k_cache, E* v_cache, int64_t tokens,       \
                                                    int64_t n_q, int64_t n_kv, int64_t d, int64_t bs) {     \
        rope_store_kv<E>(qkv, cos_t, sin_t, positions, slots, q_out, k_cache, v_cache, tokens, n_q, n_kv,   \
                         d, bs);                                                                            \
    }                                                                                                       \
    extern "C" void batchllm_paged_attention_##SUFFIX(                                                      \
        const E* q, const E* k_cache, const E* v_cache, E* out, const int32_t* items, int64_t n_items,      \
        int64_t max_vectors, const int64_t* group_chunks_start, const int32_t* group_chunks,                \
        const int64_t* shared_start, const int32_t* shared_blocks, const int32_t* chunk_row,                \
        const int32_t* chunk_qlen, const int32_t* chunk_ctx, const int64_t* private_start,                  \
        const int32_t* private_blocks, int64_t n_q, int64_t n_kv, int64_t d, int64_t bs, float scale,       \
        int64_t kernel) {                                                                                   \
        AttnArgs<E> a{q, k_cache, v_cache, out, reinterpret_cast<const Item*>(items), n_items, max_vectors, \
                      group_chunks_start, group_chunks, shared_start, shared_blocks, chunk_row, chunk_qlen, \
                      chunk_ctx, private_start, private_blocks, n_q, n_kv, d, bs, scale};                   \
        paged_attention<E>(a, kernel);                                                                      \
    }

BATCHLLM_EXPORT(bf16, uint16_t)
BATCHLLM_EXPORT(f32, float)

extern "C" int batchllm_max_head_dim() { return kMaxDim; }
