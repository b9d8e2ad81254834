//! Data augmentation on the loading thread: flips, right-angle rotations (the dihedral group),
//! zoom, random crop with padding, small rotations and lighting, applied to `u8` CHW pixels and
//! written straight into the batch's normalised `f32` buffer (no allocation per pixel or item).
//!
//! Every transform of one item is one affine map from output to source pixel coordinates
//! (composed from the drawn flips, rotations, zoom and crop offset), sampled bilinearly; pixels
//! that fall outside the source are 0 (black, as zero padding). Maps that are pure flips,
//! right-angle rotations and whole-pixel shifts land exactly on source pixels, so they move
//! pixels without changing their values. Lighting follows fastai 0.7:
//! `clip((x − mean)·contrast + mean + brightness, 0, 1)` with the mean over the whole image.
//!
//! Randomness is a pure function of `(seed, epoch, storage row)`: the same item gets the same
//! augmentation in the same epoch whatever the batch size, shuffle or number of data-parallel
//! ranks (ranks see disjoint rows, so each draws its own stream), and a resumed run repeats it.

use cyclotron_core::spec::Transform;

use super::SplitMix64;

/// A resolved augmentation pipeline; cheap to share between loader threads behind an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmenter {
    transforms: Vec<Transform>,
    /// For a test-time view: which element of the pipeline's discrete symmetries (flips,
    /// right-angle rotations) every item gets, instead of a random one; see [`Augmenter::tta_view`].
    symmetry: Option<u64>,
}

/// What was drawn for one item: source-centred = `a`·output-centred + `t`, then lighting.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Draw {
    a: [f32; 4],
    t: [f32; 2],
    /// `(brightness in 0–1 units, contrast factor)`, when a lighting transform is present.
    lighting: Option<(f32, f32)>,
}

/// Uniform in `[-1, 1)`.
fn symmetric(rng: &mut SplitMix64) -> f32 {
    ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn matmul(m: [f32; 4], n: [f32; 4]) -> [f32; 4] {
    [
        m[0] * n[0] + m[1] * n[2],
        m[0] * n[1] + m[1] * n[3],
        m[2] * n[0] + m[3] * n[2],
        m[2] * n[1] + m[3] * n[3],
    ]
}

const FLIP_H: [f32; 4] = [-1.0, 0.0, 0.0, 1.0];
const FLIP_V: [f32; 4] = [1.0, 0.0, 0.0, -1.0];
const ROT90: [f32; 4] = [0.0, -1.0, 1.0, 0.0];
const ROT180: [f32; 4] = [-1.0, 0.0, 0.0, -1.0];

/// The augmentation "epoch" of test-time augmentation view 0 (view `k` draws as epoch
/// `TTA_EPOCH + k`); training epochs never come near it.
pub const TTA_EPOCH: u64 = 1 << 62;

/// The seed of one item's draws: a mix of the job seed, the epoch and the storage row.
pub fn item_seed(seed: u64, epoch: u64, row: usize) -> u64 {
    let a = SplitMix64::new(seed).next_u64();
    let b = SplitMix64::new(a ^ epoch).next_u64();
    SplitMix64::new(b ^ row as u64).next_u64()
}

impl Augmenter {
    pub fn new(transforms: Vec<Transform>) -> Augmenter {
        Augmenter { transforms, symmetry: None }
    }

    /// How many discrete symmetries the pipeline draws from: 2 per flip, 4 for `rot90`, 8 for
    /// `dihedral` (their product; 1 without any).
    pub fn symmetries(&self) -> u64 {
        self.transforms.iter().map(symmetry_count).product()
    }

    /// The pipeline of test-time view `k` (0-based): its discrete symmetries fixed to element
    /// `(k + 1) mod symmetries()` for every item, its continuous transforms (crop, zoom, rotation,
    /// lighting) still drawn. The original image is element 0, so with flips only one view is the
    /// mirror image and `n = symmetries() − 1` views cover every flip and rotation once — as fastai
    /// flips every other TTA view rather than leaving it to chance.
    pub fn tta_view(&self, k: u64) -> Augmenter {
        let g = self.symmetries();
        Augmenter { transforms: self.transforms.clone(), symmetry: Some((k + 1) % g) }
    }

    /// No transforms: the loader's plain path is used.
    pub fn is_identity(&self) -> bool {
        self.transforms.is_empty()
    }

    fn draw(&self, rng: &mut SplitMix64, square: bool) -> Draw {
        let mut d = Draw { a: [1.0, 0.0, 0.0, 1.0], t: [0.0, 0.0], lighting: None };
        // a fixed symmetry (a TTA view) is read digit by digit, one mixed-radix digit per
        // discrete transform; otherwise each is drawn
        let mut fixed = self.symmetry;
        let mut choose = |rng: &mut SplitMix64, n: u64| match fixed.as_mut() {
            Some(rest) => {
                let digit = *rest % n;
                *rest /= n;
                digit
            }
            None => rng.below(n),
        };
        for t in &self.transforms {
            match *t {
                Transform::FlipH => {
                    if choose(rng, 2) == 1 {
                        d.a = matmul(d.a, FLIP_H);
                    }
                }
                Transform::FlipV => {
                    if choose(rng, 2) == 1 {
                        d.a = matmul(d.a, FLIP_V);
                    }
                }
                Transform::Rot90 | Transform::Dihedral => {
                    let k = choose(rng, 4);
                    // a non-square image only keeps its shape under 0° and 180°
                    let quarter = if square { ROT90 } else { ROT180 };
                    for _ in 0..(if square { k } else { k % 2 }) {
                        d.a = matmul(d.a, quarter);
                    }
                    if matches!(t, Transform::Dihedral) && choose(rng, 2) == 1 {
                        d.a = matmul(d.a, FLIP_H);
                    }
                }
                Transform::Zoom { max } => {
                    let z = 1.0 + (max - 1.0) * (symmetric(rng) + 1.0) / 2.0;
                    d.a = d.a.map(|v| v / z);
                }
                Transform::CropPad { pad } => {
                    let span = u64::from(2 * pad + 1);
                    d.t[0] += rng.below(span) as f32 - pad as f32;
                    d.t[1] += rng.below(span) as f32 - pad as f32;
                }
                Transform::Rotate { degrees } => {
                    let th = (degrees * symmetric(rng)).to_radians();
                    let (s, c) = th.sin_cos();
                    d.a = matmul(d.a, [c, -s, s, c]);
                }
                Transform::Lighting { brightness, contrast } => {
                    d.lighting = Some((brightness * symmetric(rng), 1.0 + contrast * symmetric(rng)));
                }
            }
        }
        d
    }

    /// Augment one CHW `u8` image `src` of shape `[c, h, w]` into `out` (length `c·h·w`),
    /// normalised as `v/255·scale[ch] + offset[ch]`, with draws seeded by `seed`.
    pub fn apply(
        &self,
        src: &[u8],
        [c, h, w]: [usize; 3],
        seed: u64,
        scale: &[f32],
        offset: &[f32],
        out: &mut [f32],
    ) {
        debug_assert_eq!(src.len(), c * h * w);
        debug_assert_eq!(out.len(), c * h * w);
        let mut rng = SplitMix64::new(seed);
        let d = self.draw(&mut rng, h == w);
        let plane = h * w;
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        for ch in 0..c {
            let s = &src[ch * plane..(ch + 1) * plane];
            let o = &mut out[ch * plane..(ch + 1) * plane];
            for y in 0..h {
                let v = y as f32 + 0.5 - cy;
                for x in 0..w {
                    let u = x as f32 + 0.5 - cx;
                    let sx = d.a[0] * u + d.a[1] * v + d.t[0] + cx - 0.5;
                    let sy = d.a[2] * u + d.a[3] * v + d.t[1] + cy - 0.5;
                    o[y * w + x] = bilinear(s, h, w, sx, sy);
                }
            }
        }
        // lighting in 0–1 units, then normalisation; values are 0–255 so far
        let light = d.lighting.map(|(b, k)| {
            let mean =
                out.iter().map(|&v| f64::from(v)).sum::<f64>() as f32 / out.len().max(1) as f32 / 255.0;
            (b, k, mean)
        });
        for ch in 0..c {
            let (sc, off) = (scale[ch], offset[ch]);
            for v in &mut out[ch * plane..(ch + 1) * plane] {
                let mut x = *v / 255.0;
                if let Some((b, k, mean)) = light {
                    x = ((x - mean) * k + mean + b).clamp(0.0, 1.0);
                }
                *v = x * sc + off;
            }
        }
    }
}

/// The discrete symmetries transform `t` draws from (1 for a continuous one).
fn symmetry_count(t: &Transform) -> u64 {
    match t {
        Transform::FlipH | Transform::FlipV => 2,
        Transform::Rot90 => 4,
        Transform::Dihedral => 8,
        _ => 1,
    }
}

/// Bilinear sample of a `h×w` plane at `(sx, sy)`; outside the plane counts as 0.
#[inline]
fn bilinear(s: &[u8], h: usize, w: usize, sx: f32, sy: f32) -> f32 {
    let (x0, y0) = (sx.floor(), sy.floor());
    let (fx, fy) = (sx - x0, sy - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let at = |x: i64, y: i64| -> f32 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0.0
        } else {
            f32::from(s[y as usize * w + x as usize])
        }
    };
    if fx < 1e-4 && fy < 1e-4 {
        return at(x0, y0);
    }
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
    let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &[Transform], img: &[u8], shape: [usize; 3], seed: u64) -> Vec<f32> {
        let aug = Augmenter::new(t.to_vec());
        let scale = vec![1.0; shape[0]];
        let offset = vec![0.0; shape[0]];
        let mut out = vec![0.0; img.len()];
        aug.apply(img, shape, seed, &scale, &offset, &mut out);
        out.iter().map(|v| v * 255.0).collect()
    }

    fn ramp(h: usize, w: usize) -> Vec<u8> {
        (0..h * w).map(|i| i as u8).collect()
    }

    #[test]
    fn no_transforms_is_the_identity() {
        let img = ramp(3, 4);
        let out = run(&[], &img, [1, 3, 4], 9);
        assert!(out.iter().zip(&img).all(|(a, &b)| (a - f32::from(b)).abs() < 1e-3), "{out:?}");
    }

    #[test]
    fn flips_mirror_exactly_and_are_seeded() {
        let img = ramp(2, 3); // rows [0 1 2] [3 4 5]
        let mut seen_flip = false;
        for seed in 0..16 {
            let out = run(&[Transform::FlipH], &img, [1, 2, 3], seed);
            let flipped = [2.0, 1.0, 0.0, 5.0, 4.0, 3.0];
            let same: Vec<f32> = img.iter().map(|&v| f32::from(v)).collect();
            let is_flip = out.iter().zip(flipped).all(|(a, b)| (a - b).abs() < 1e-3);
            let is_same = out.iter().zip(&same).all(|(a, b)| (a - b).abs() < 1e-3);
            assert!(is_flip || is_same, "seed {seed}: {out:?}");
            seen_flip |= is_flip;
            assert_eq!(out, run(&[Transform::FlipH], &img, [1, 2, 3], seed), "not deterministic");
        }
        assert!(seen_flip);
    }

    #[test]
    fn dihedral_permutes_pixels_of_a_square() {
        let img = ramp(4, 4);
        for seed in 0..16 {
            let mut out = run(&[Transform::Dihedral], &img, [1, 4, 4], seed);
            out.sort_by(f32::total_cmp);
            let want: Vec<f32> = (0..16).map(|v| v as f32).collect();
            assert!(out.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-3), "seed {seed}: {out:?}");
        }
    }

    #[test]
    fn crop_pad_shifts_by_whole_pixels_with_zero_padding() {
        let img = vec![255u8; 25];
        for seed in 0..20 {
            let out = run(&[Transform::CropPad { pad: 2 }], &img, [1, 5, 5], seed);
            assert!(out.iter().all(|&v| v.abs() < 1e-3 || (v - 255.0).abs() < 1e-3), "{out:?}");
            let lit = out.iter().filter(|&&v| v > 1.0).count();
            assert!((9..=25).contains(&lit), "seed {seed}: {lit} lit");
        }
    }

    #[test]
    fn lighting_zoom_and_rotation_stay_in_range_and_keep_shape() {
        let img: Vec<u8> = (0..3 * 8 * 8).map(|i| (i * 7 % 256) as u8).collect();
        let t = [
            Transform::Rotate { degrees: 10.0 },
            Transform::Zoom { max: 1.2 },
            Transform::Lighting { brightness: 0.1, contrast: 0.1 },
        ];
        let a = run(&t, &img, [3, 8, 8], 1);
        assert_eq!(a.len(), img.len());
        assert!(a.iter().all(|v| (-1e-3..=255.001).contains(v)));
        assert_ne!(a, run(&t, &img, [3, 8, 8], 2));
    }

    #[test]
    fn tta_views_take_each_flip_and_rotation_in_turn_and_still_draw_the_rest() {
        let img: Vec<u8> = (0..16).map(|i| (i * 13 % 256) as u8).collect();
        let aug = Augmenter::new(vec![Transform::FlipH]);
        assert_eq!(aug.symmetries(), 2);
        // pixel values back in 0–255, rounded: flips and rotations only move pixels
        let view = |a: &Augmenter, seed| -> Vec<f32> {
            let mut out = vec![0.0; img.len()];
            a.apply(&img, [1, 4, 4], seed, &[1.0], &[0.0], &mut out);
            out.iter().map(|v| (v * 255.0).round()).collect()
        };
        let original: Vec<f32> = img.iter().map(|&v| f32::from(v)).collect();
        let mirrored: Vec<f32> = (0..16).map(|i| original[i / 4 * 4 + 3 - i % 4]).collect();
        for seed in 0..20 {
            // view 0 is the mirror image for every item, view 1 the original again
            assert_eq!(view(&aug.tta_view(0), seed), mirrored, "seed {seed}");
            assert_eq!(view(&aug.tta_view(1), seed), original, "seed {seed}");
        }
        // the dihedral group: 7 views and the original are the 8 distinct images
        let d4 = Augmenter::new(vec![Transform::Dihedral]);
        assert_eq!(d4.symmetries(), 8);
        let mut seen: Vec<Vec<f32>> = (0..7).map(|k| view(&d4.tta_view(k), 3)).collect();
        seen.push(original.clone());
        for (i, a) in seen.iter().enumerate() {
            for b in &seen[i + 1..] {
                assert_ne!(a, b, "two dihedral views coincide");
            }
        }
        // continuous transforms are still drawn per item: crops differ between seeds
        let crop = Augmenter::new(vec![Transform::FlipH, Transform::CropPad { pad: 2 }]);
        let views: Vec<Vec<f32>> = (0..20).map(|seed| view(&crop.tta_view(0), seed)).collect();
        assert!(views.iter().any(|v| v != &views[0]), "the crop offset was fixed too");
    }

    #[test]
    fn item_seeds_differ_by_epoch_and_row() {
        assert_eq!(item_seed(1, 2, 3), item_seed(1, 2, 3));
        assert_ne!(item_seed(1, 2, 3), item_seed(1, 3, 3));
        assert_ne!(item_seed(1, 2, 3), item_seed(1, 2, 4));
        assert_ne!(item_seed(1, 2, 3), item_seed(2, 2, 3));
    }
}
