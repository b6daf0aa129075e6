/* The sums and sums of squares of local-attention logits l = q_i·k_j over every (pixel, offset) pair of a stride-1
 * window, and their gradient, without writing the K logits per pixel (attnvision.ops.moments: the batch statistics
 * of Axial-DeepLab's logit BatchNorm for a k x k window). Layout as nbr_cpu.c: q [N,D,Ho,Wo], kp [N,D,Hp,Wp]
 * padded, neighbour (y + oy*dil, x + ox*dil); one thread per plane n.
 *
 *   dot_moments    : sums[n] = (sum l, sum l^2) over the plane's pairs
 *   dot_moments_bwd: w = coef[n,0] + coef[n,1] * l per pair; dq[n,:,i] = sum_j w kp[n,:,j], dkp[n,:,j] += w q[n,:,i]
 *
 * Rows run on vectors of one register (simd.h); the last one of a row overlaps the one before it, and the lanes it shares count
 * once (a lane mask); rows narrower than a vector run on scalars (moments.py lays them out as one long row). */
#include <stdint.h>

#include "simd.h"

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

#define T float
#define SUF f32
#include "moments_impl.h"
#undef T
#undef SUF

#define T double
#define SUF f64
#include "moments_impl.h"
