//! Coefficient packing of conv and fully connected layers into RLWE plaintexts (Cheetah's HomConv
//! and HomFC, Huang et al., USENIX Security 2022, §4.1–4.2), per sample:
//!
//! - **Conv** (`[C, H, W]` input, padding `p`, kernel `kh x kw`, per channel group): the padded
//!   input `Hp x Wp = (H + 2p) x (W + 2p)` must fit one polynomial (`Hp Wp <= N`); `Cn =
//!   min(C, N / (Hp Wp))` channels per input polynomial, coefficient `c Hp Wp + i Wp + j`. The
//!   kernel of output channel `o` for channel block `b` is placed reversed: coefficient
//!   `O - c Hp Wp - l Wp - l'` with `O = (Cn - 1) Hp Wp + (kh - 1) Wp + kw - 1`. Then coefficient
//!   `O + i Wp + j` of the product is the stride-1 convolution at `(i, j)` over the block's
//!   channels; summing the blocks' products gives the output channel (`out_h * out_w` useful
//!   coefficients; strides pick every s-th). Several output channels share one response (an
//!   extension of Cheetah's packing that keeps small feature maps from wasting most of each
//!   response): the kernels of `P` output channels are placed at offsets `p D`. The product of
//!   kernel `p` has support `[p D, p D + Cn Hp Wp + O)` and its useful coefficients are `p D + O +
//!   [0, U)` (`U` the span of the strided output positions); no product's support may touch
//!   another's useful coefficients, also after the negacyclic wrap, which holds when `D >= max(O
//!   + U, Cn Hp Wp)`, `(P - 1) D + Cn Hp Wp <= N` and `(P - 1) D + O + U <= N` (the garbage
//!   coefficients may overlap each other: they are never decrypted). `Cn` minimises the bytes
//!   `2 * input polynomials + responses` (an upload is twice the size of a response).
//! - **Fully connected** (`in -> out`): input blocks of `ni` elements (coefficient `j`), output
//!   blocks of `no = min(out, N / ni)` rows; weight row `r` of a block reversed at coefficients
//!   `r ni + ni - 1 - j`, so coefficient `r ni + ni - 1` of the product is the partial dot product.
//!   `ni` minimises `2 * input blocks + output blocks` (an upload ciphertext is twice the size of
//!   a response).
//!
//! Everything here is public geometry except the kernel values ([`Packing::kernel`], server).

use super::he::DEGREE;
use crate::error::{Error, Result};
use crate::model::ConvGeom;

/// How one layer is packed.
#[derive(Debug, Clone)]
pub enum Packing {
    /// A conv layer.
    Conv {
        /// The layer geometry.
        geom: ConvGeom,
        /// Input channels per input polynomial.
        cn: usize,
        /// Output channels per response.
        per: usize,
    },
    /// A fully connected layer.
    Fc {
        /// Input features.
        n_in: usize,
        /// Output features.
        n_out: usize,
        /// Inputs per input polynomial.
        ni: usize,
        /// Outputs per response.
        no: usize,
    },
}

/// Largest number of non-zero kernel coefficients one response may sum (over its input
/// polynomials): the encryption noise times the kernel grows with it, and the flooding of
/// [`super::he::flood_bits`] must stay within the modulus (checked by a test there).
pub const MAX_NOISE_FAN_IN: usize = 1 << 17;

fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1))
}

/// `(D, O, U)` of a conv packed with `cn` channels per input polynomial: the offset between
/// the kernels of output channels sharing a response, the position of output `(0, 0)` in a
/// product, and the span of the useful (strided output) coefficients (module docs).
fn offset_stride(g: &ConvGeom, cn: usize) -> (usize, usize, usize) {
    let wp = g.w + 2 * g.padding;
    let hw = (g.h + 2 * g.padding) * wp;
    let o = (cn - 1) * hw + (g.kh - 1) * wp + g.kw - 1;
    let u = (g.out_h().max(1) - 1) * g.stride * wp + (g.out_w().max(1) - 1) * g.stride + 1;
    ((o + u).max(cn * hw), o, u)
}

impl Packing {
    /// Packing of a conv layer. Errors: `Graph` (naming `node`) when a padded input plane does
    /// not fit one polynomial (spatial tiling is not built) or the geometry is degenerate.
    pub fn conv(geom: ConvGeom, node: &str) -> Result<Packing> {
        let hw = (geom.h + 2 * geom.padding) * (geom.w + 2 * geom.padding);
        if hw > DEGREE || hw == 0 || geom.groups == 0 || geom.stride == 0 {
            return Err(Error::graph(
                node,
                format!(
                    "two-party preprocessing: padded input plane of {hw} values does not fit \
                     one polynomial of {DEGREE} coefficients"
                ),
            ));
        }
        let c = (geom.c_in / geom.groups).max(1);
        let m = (geom.c_out / geom.groups).max(1);
        let mut best = (usize::MAX, 1, 1);
        for cn in 1..=c.min(DEGREE / hw).max(1) {
            let (d, o, u) = offset_stride(&geom, cn);
            let room = DEGREE.saturating_sub(cn * hw).min(DEGREE.saturating_sub(o + u));
            let k = cn.min(c) * geom.kh * geom.kw * div_ceil(c, cn);
            let per = (room / d + 1).min(MAX_NOISE_FAN_IN / k.max(1)).clamp(1, m);
            // Bytes in units of a response's `a`: uploads count twice, each response carries
            // its useful `b` coefficients too.
            let useful = per * geom.out_h() * geom.out_w();
            let cost = 2 * DEGREE * div_ceil(c, cn) + div_ceil(m, per) * (DEGREE + useful);
            if cost < best.0 {
                best = (cost, cn, per);
            }
        }
        Ok(Packing::Conv { geom, cn: best.1, per: best.2 })
    }

    /// Packing of a fully connected layer `n_in -> n_out`.
    pub fn fc(n_in: usize, n_out: usize) -> Packing {
        let mut best = (usize::MAX, 1, 1);
        for s in 0..=DEGREE.trailing_zeros() {
            let ni = n_in.min(DEGREE >> s).max(1);
            let no = n_out.min(DEGREE / ni).min(MAX_NOISE_FAN_IN / n_in.max(1)).max(1);
            let cost = 2 * div_ceil(n_in, ni) + div_ceil(n_out, no);
            if cost < best.0 {
                best = (cost, ni, no);
            }
        }
        Packing::Fc { n_in, n_out, ni: best.1, no: best.2 }
    }

    /// Products summed per output (the fan-in the noise flooding is sized for).
    pub fn fan_in(&self) -> usize {
        match self {
            Packing::Conv { geom, .. } => (geom.c_in / geom.groups) * geom.kh * geom.kw,
            Packing::Fc { n_in, .. } => *n_in,
        }
    }

    /// Non-zero kernel coefficients one response sums over its input polynomials (an upper
    /// bound): what the encryption noise is multiplied by ([`super::he::flood_bits`]'s fan-in).
    pub fn noise_fan_in(&self) -> usize {
        match self {
            Packing::Conv { per, .. } => per * self.fan_in(),
            Packing::Fc { n_in, no, .. } => n_in * no,
        }
    }

    /// Ring elements of one sample's input.
    pub fn in_len(&self) -> usize {
        match self {
            Packing::Conv { geom, .. } => geom.c_in * geom.h * geom.w,
            Packing::Fc { n_in, .. } => *n_in,
        }
    }

    /// Ring elements of one sample's output.
    pub fn out_len(&self) -> usize {
        match self {
            Packing::Conv { geom, .. } => geom.c_out * geom.out_h() * geom.out_w(),
            Packing::Fc { n_out, .. } => *n_out,
        }
    }

    /// `(geom, cn, wp, hw, channel blocks)` of a conv packing.
    fn conv_dims(&self) -> (ConvGeom, usize, usize, usize, usize) {
        let Packing::Conv { geom, cn, .. } = self else { unreachable!() };
        let wp = geom.w + 2 * geom.padding;
        let hw = (geom.h + 2 * geom.padding) * wp;
        let blocks = div_ceil(geom.c_in / geom.groups, *cn);
        (*geom, *cn, wp, hw, blocks)
    }

    /// Input polynomials per sample.
    pub fn inputs(&self) -> usize {
        match self {
            Packing::Conv { .. } => {
                let (g, _, _, _, blocks) = self.conv_dims();
                g.groups * blocks
            }
            Packing::Fc { n_in, ni, .. } => div_ceil(*n_in, *ni),
        }
    }

    /// `(responses per group, output channels per response, offset stride D, O)` of a conv.
    fn conv_out(&self) -> (usize, usize, usize, usize) {
        let Packing::Conv { geom, cn, per } = self else { unreachable!() };
        let (d, o, _) = offset_stride(geom, *cn);
        (div_ceil(geom.c_out / geom.groups, *per), *per, d, o)
    }

    /// Responses per sample.
    pub fn outputs(&self) -> usize {
        match self {
            Packing::Conv { geom, .. } => geom.groups * self.conv_out().0,
            Packing::Fc { n_out, no, .. } => div_ceil(*n_out, *no),
        }
    }

    /// The client's input polynomial `j` of one sample `x` (`in_len` ring elements, NCHW /
    /// `[in]`): `N` coefficients.
    pub fn input_poly(&self, x: &[u64], j: usize) -> Vec<u64> {
        let mut m = vec![0u64; DEGREE];
        match self {
            Packing::Conv { .. } => {
                let (g, cn, wp, hw, blocks) = self.conv_dims();
                let cg = g.c_in / g.groups;
                let (grp, b) = (j / blocks, j % blocks);
                for c in 0..cn {
                    let ch = b * cn + c;
                    if ch >= cg {
                        break;
                    }
                    let ch = grp * cg + ch;
                    for i in 0..g.h {
                        for jj in 0..g.w {
                            let pos = c * hw + (i + g.padding) * wp + jj + g.padding;
                            m[pos] = x[(ch * g.h + i) * g.w + jj];
                        }
                    }
                }
            }
            Packing::Fc { n_in, ni, .. } => {
                let lo = j * ni;
                let hi = (lo + ni).min(*n_in);
                m[..hi - lo].copy_from_slice(&x[lo..hi]);
            }
        }
        m
    }

    /// The input polynomials that response `o` sums.
    pub fn terms(&self, o: usize) -> std::ops::Range<usize> {
        match self {
            Packing::Conv { .. } => {
                let (_, _, _, _, blocks) = self.conv_dims();
                let grp = o / self.conv_out().0;
                grp * blocks..(grp + 1) * blocks
            }
            Packing::Fc { .. } => 0..self.inputs(),
        }
    }

    /// Useful coefficients of response `o` with the output element (within the sample) each one
    /// holds.
    pub fn useful(&self, o: usize) -> Vec<(u32, usize)> {
        match self {
            Packing::Conv { .. } => {
                let (g, _, wp, _, _) = self.conv_dims();
                let (rpg, per, d, off) = self.conv_out();
                let mg = g.c_out / g.groups;
                let (grp, r) = (o / rpg, o % rpg);
                let (oh, ow) = (g.out_h(), g.out_w());
                let mut v = Vec::with_capacity(per * oh * ow);
                for p in 0..per {
                    let oc = r * per + p;
                    if oc >= mg {
                        break;
                    }
                    let ch = grp * mg + oc;
                    for i in 0..oh {
                        for j in 0..ow {
                            let pos = p * d + off + i * g.stride * wp + j * g.stride;
                            v.push((pos as u32, (ch * oh + i) * ow + j));
                        }
                    }
                }
                v
            }
            Packing::Fc { n_out, ni, no, .. } => {
                let lo = o * no;
                (lo..(lo + no).min(*n_out)).map(|r| (((r - lo) * ni + ni - 1) as u32, r)).collect()
            }
        }
    }

    /// The server's kernel polynomial of response `o` and input polynomial `j` (one of
    /// [`Packing::terms`]): `N` coefficients. `weight` is the encoded weight: conv per group
    /// `[c_out/g, (c_in/g) kh kw]`; fc `weight_t` as `[in, out]` (in `weight[0]`).
    pub fn kernel(&self, weight: &[Vec<u64>], o: usize, j: usize) -> Vec<u64> {
        let mut k = vec![0u64; DEGREE];
        match self {
            Packing::Conv { .. } => {
                let (g, cn, wp, hw, blocks) = self.conv_dims();
                let (rpg, per, d, off) = self.conv_out();
                let cg = g.c_in / g.groups;
                let og = g.c_out / g.groups;
                let (grp, b) = (j / blocks, j % blocks);
                let r = o % rpg;
                let kk = cg * g.kh * g.kw;
                let wg = &weight[grp];
                for p in 0..per {
                    let oo = r * per + p;
                    if oo >= og {
                        break;
                    }
                    for c in 0..cn {
                        let ch = b * cn + c;
                        if ch >= cg {
                            break;
                        }
                        for l in 0..g.kh {
                            for l2 in 0..g.kw {
                                let pos = p * d + off - c * hw - l * wp - l2;
                                k[pos] = wg[oo * kk + (ch * g.kh + l) * g.kw + l2];
                            }
                        }
                    }
                }
            }
            Packing::Fc { n_in, n_out, ni, no } => {
                let w = &weight[0];
                let (r0, j0) = (o * no, j * ni);
                for r in r0..(r0 + no).min(*n_out) {
                    for jj in j0..(j0 + ni).min(*n_in) {
                        k[(r - r0) * ni + ni - 1 - (jj - j0)] = w[jj * n_out + r];
                    }
                }
            }
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpc::ops;
    use crate::ring::RingTensor;
    use proptest::prelude::*;

    /// Negacyclic product of two `N`-coefficient polynomials mod 2^64, only at `pos`.
    fn coeff(a: &[u64], b: &[u64], pos: usize) -> u64 {
        let mut acc = 0u64;
        for (j, &bj) in b.iter().enumerate() {
            if bj == 0 {
                continue;
            }
            let (i, neg) = if pos >= j { (pos - j, false) } else { (pos + DEGREE - j, true) };
            let t = a[i].wrapping_mul(bj);
            acc = if neg { acc.wrapping_sub(t) } else { acc.wrapping_add(t) };
        }
        acc
    }

    /// The packed products, evaluated in the clear, equal the layer (the HE layer only adds
    /// encryption around exactly these products).
    fn check(p: &Packing, x: &[u64], weight: &[Vec<u64>], want: &[u64]) {
        let inputs: Vec<Vec<u64>> = (0..p.inputs()).map(|j| p.input_poly(x, j)).collect();
        let mut got = vec![None; p.out_len()];
        for o in 0..p.outputs() {
            let kernels: Vec<(usize, Vec<u64>)> =
                p.terms(o).map(|j| (j, p.kernel(weight, o, j))).collect();
            for (pos, idx) in p.useful(o) {
                let v = kernels
                    .iter()
                    .fold(0u64, |s, (j, k)| s.wrapping_add(coeff(&inputs[*j], k, pos as usize)));
                assert!(got[idx].is_none(), "output {idx} twice");
                got[idx] = Some(v);
            }
        }
        let got: Vec<u64> = got.into_iter().map(|v| v.expect("every output once")).collect();
        assert_eq!(got, want);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn conv_packing_equals_conv(
            c_in in 1usize..12, c_out in 1usize..40, hw in 3usize..9, k in 1usize..4,
            stride in 1usize..3, padding in 0usize..2, grouped in any::<bool>(), seed in any::<u64>()
        ) {
            let groups = if grouped && c_out % c_in == 0 { c_in } else { 1 };
            prop_assume!(hw + 2 * padding >= k);
            let geom = ConvGeom { c_in, h: hw, w: hw + 1, c_out, kh: k, kw: k.max(2).min(hw), stride, padding, groups };
            prop_assume!(geom.w + 2 * padding >= geom.kw);
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); s };
            let x: Vec<u64> = (0..c_in * geom.h * geom.w).map(|_| next()).collect();
            let kk = (c_in / groups) * geom.kh * geom.kw;
            let weight: Vec<Vec<u64>> = (0..groups).map(|_| (0..(c_out / groups) * kk).map(|_| next()).collect()).collect();
            let want = ops::conv_ring(&RingTensor { shape: vec![1, c_in, geom.h, geom.w], data: x.clone() }, &weight, &geom, "t").unwrap();
            let p = Packing::conv(geom, "t").unwrap();
            check(&p, &x, &weight, &want.data);
        }

        #[test]
        fn fc_packing_equals_linear(n_in in 1usize..300, n_out in 1usize..40, seed in any::<u64>()) {
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); s };
            let x: Vec<u64> = (0..n_in).map(|_| next()).collect();
            let w: Vec<u64> = (0..n_in * n_out).map(|_| next()).collect();
            let want = ops::linear_ring(&RingTensor { shape: vec![1, n_in], data: x.clone() }, &w, n_in, n_out, "t").unwrap();
            check(&Packing::fc(n_in, n_out), &x, &[w], &want.data);
        }
    }

    #[test]
    fn small_maps_pack_several_output_channels() {
        let geom = ConvGeom {
            c_in: 128,
            h: 8,
            w: 8,
            c_out: 256,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let p = Packing::conv(geom, "c").unwrap();
        let Packing::Conv { per, .. } = p else { unreachable!() };
        assert!(per > 1, "{p:?}");
        assert!(p.outputs() < 256 / 4, "{p:?}");
    }

    /// NET-C's 8x8 layers and a strided ResNet layer, packed and evaluated in the clear:
    /// several output channels per response, every output exactly once and correct.
    #[test]
    fn dense_output_packing_is_exact_on_small_maps() {
        let mut s = 7u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s
        };
        for (c_in, hw, c_out, k, stride, padding) in
            [(64, 8, 64, 3, 1, 1), (64, 8, 16, 1, 1, 0), (16, 16, 32, 3, 2, 1)]
        {
            let geom =
                ConvGeom { c_in, h: hw, w: hw, c_out, kh: k, kw: k, stride, padding, groups: 1 };
            let p = Packing::conv(geom, "t").unwrap();
            let Packing::Conv { per, .. } = p else { unreachable!() };
            assert!(per >= 4, "{p:?}");
            let x: Vec<u64> = (0..c_in * hw * hw).map(|_| next()).collect();
            let weight = vec![(0..c_out * c_in * k * k).map(|_| next()).collect::<Vec<u64>>()];
            let want = ops::conv_ring(
                &RingTensor { shape: vec![1, c_in, hw, hw], data: x.clone() },
                &weight,
                &geom,
                "t",
            )
            .unwrap();
            check(&p, &x, &weight, &want.data);
        }
    }

    #[test]
    fn big_fc_uses_several_blocks_and_big_planes_are_refused() {
        let p = Packing::fc(20000, 10);
        assert!(p.inputs() >= 3);
        let geom = ConvGeom {
            c_in: 1,
            h: 100,
            w: 100,
            c_out: 1,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
            groups: 1,
        };
        assert!(Packing::conv(geom, "big").is_err());
    }
}
