/* The vector width every kernel here is written for: one register of the target. 64 bytes (16 floats) where the
 * compiler targets AVX-512; 32 bytes (8 floats) elsewhere (AVX2, and NEON as register pairs). A 64-byte vector on an
 * AVX2 machine is two registers, and the kernels' register tiles (8 accumulators) then spill: on a 2-core AVX2 EPYC
 * a 7x7 SASA layer ran 65 ms forward with 64-byte blocks and 16 ms with 32-byte ones. ``vector_bytes()`` tells the
 * Python side, whose layouts (narrow rows, block overhang) follow it. */
#ifndef ATTNVISION_SIMD_H
#define ATTNVISION_SIMD_H
#ifdef __AVX512F__
#define VBYTES 64
#else
#define VBYTES 32
#endif
#endif
