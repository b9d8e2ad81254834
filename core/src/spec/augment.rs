//! Data augmentation and test-time augmentation settings: `[data.augment]` and `[tta]`.
//!
//! Augmentation is a list of transforms, given by a named preset (fastai 0.7's
//! `transforms_side_on` / `transforms_top_down`) or explicitly, each as a short string:
//!
//! | string | transform |
//! |---|---|
//! | `flip_h` | horizontal (side-on) flip, half the time |
//! | `flip_v` | vertical flip, half the time |
//! | `rot90` | one of the 4 right-angle rotations (square images) |
//! | `dihedral` | one of the 8 flips/right-angle rotations (top-down, satellite-style; square images) |
//! | `zoom:1.1` | zoom in by a uniform factor in [1, 1.1] |
//! | `crop_pad:2` | pad 2 pixels on every side, then crop at a random offset |
//! | `rotate:10` | rotate by a uniform angle in ±10° |
//! | `lighting:0.05:0.05` | brightness shift ±0.05, contrast factor 1 ± 0.05 |
//!
//! ```toml
//! [data.augment]
//! preset = "side_on"      # or transforms = ["flip_h", "crop_pad:2"]
//! max_zoom = 1.1          # adds zoom:1.1
//! [tta]
//! n = 4                   # augmented views averaged with the original
//! beta = 0.25             # fastai v2: lerp(mean of augmented, original, beta); leave out for a plain mean
//! ```

use serde::{Deserialize, Serialize};

/// One augmentation transform with its parameters; parsed from the strings in the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    FlipH,
    FlipV,
    Rot90,
    Dihedral,
    /// Zoom in by a factor uniform in `[1, max]`.
    Zoom {
        max: f32,
    },
    /// Pad `pad` pixels on every side, crop back to size at a random offset.
    CropPad {
        pad: u32,
    },
    /// Rotate by an angle uniform in `±degrees`.
    Rotate {
        degrees: f32,
    },
    /// Add a brightness shift uniform in `±brightness` (of the 0–1 range) and scale contrast by
    /// a factor uniform in `1 ± contrast`.
    Lighting {
        brightness: f32,
        contrast: f32,
    },
}

/// Presets, as fastai 0.7 defines them (`RandomRotate(10)`, `RandomLighting(0.05, 0.05)`, then a
/// flip for side-on photos or the dihedral group for top-down ones).
pub const PRESETS: &[(&str, &[&str])] = &[
    ("side_on", &["rotate:10", "lighting:0.05:0.05", "flip_h"]),
    ("top_down", &["rotate:10", "lighting:0.05:0.05", "dihedral"]),
];

impl Transform {
    /// Parse one transform string; the error says what is wrong and what is accepted.
    pub fn parse(text: &str) -> Result<Transform, String> {
        let mut parts = text.split(':');
        let name = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        let num = |i: usize, default: Option<f32>| -> Result<f32, String> {
            match (args.get(i), default) {
                (Some(a), _) => a
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| format!("{text:?}: {a:?} is not a number")),
                (None, Some(d)) => Ok(d),
                (None, None) => {
                    Err(format!("{text:?}: {name} needs a value, e.g. \"{name}:{}\"", example(name)))
                }
            }
        };
        let max_args = match name {
            "flip_h" | "flip_v" | "rot90" | "dihedral" => 0,
            "lighting" => 2,
            _ => 1,
        };
        if args.len() > max_args {
            return Err(format!("{text:?}: {name} takes at most {max_args} value(s)"));
        }
        let t = match name {
            "flip_h" => Transform::FlipH,
            "flip_v" => Transform::FlipV,
            "rot90" => Transform::Rot90,
            "dihedral" => Transform::Dihedral,
            "zoom" => Transform::Zoom { max: num(0, None)? },
            "crop_pad" => {
                let pad = num(0, None)?;
                if pad.fract() != 0.0 || pad < 0.0 {
                    return Err(format!("{text:?}: the padding must be a whole number of pixels ≥ 0"));
                }
                Transform::CropPad { pad: pad as u32 }
            }
            "rotate" => Transform::Rotate { degrees: num(0, None)? },
            "lighting" => {
                let b = num(0, None)?;
                Transform::Lighting { brightness: b, contrast: num(1, Some(b))? }
            }
            other => {
                return Err(format!(
                    "{other:?} is not a transform; use flip_h, flip_v, rot90, dihedral, zoom:MAX, crop_pad:PIXELS, rotate:DEGREES, lighting:B[:C]"
                ))
            }
        };
        t.check().map(|()| t).map_err(|m| format!("{text:?}: {m}"))
    }

    fn check(&self) -> Result<(), String> {
        match *self {
            Transform::Zoom { max } if !(1.0..=4.0).contains(&max) => {
                Err(format!("the zoom must be between 1 and 4, got {max}"))
            }
            Transform::CropPad { pad } if pad > 64 => {
                Err(format!("the padding must be ≤ 64 pixels, got {pad}"))
            }
            Transform::Rotate { degrees } if !(0.0..=180.0).contains(&degrees) => {
                Err(format!("the angle must be between 0 and 180 degrees, got {degrees}"))
            }
            Transform::Lighting { brightness, contrast }
                if !(0.0..1.0).contains(&brightness) || !(0.0..1.0).contains(&contrast) =>
            {
                Err(format!("brightness and contrast must be in [0, 1), got {brightness} and {contrast}"))
            }
            _ => Ok(()),
        }
    }
}

fn example(name: &str) -> &'static str {
    match name {
        "zoom" => "1.1",
        "crop_pad" => "4",
        "rotate" => "10",
        _ => "0.05",
    }
}

/// `[data.augment]`: which transforms training batches get. Evaluation never augments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSpec {
    /// `side_on` or `top_down`; see [`PRESETS`].
    #[serde(default)]
    pub preset: Option<String>,
    /// Transforms in the strings of the module docs, applied after the preset's.
    #[serde(default)]
    pub transforms: Vec<String>,
    /// Adds `zoom:max_zoom` when above 1 (fastai's `max_zoom`).
    #[serde(default)]
    pub max_zoom: Option<f32>,
}

impl AugmentSpec {
    /// The transforms in order, or every problem found (messages start with the field).
    pub fn resolve(&self) -> Result<Vec<Transform>, Vec<String>> {
        let mut texts: Vec<&str> = vec![];
        let mut problems = vec![];
        if let Some(p) = &self.preset {
            match PRESETS.iter().find(|(n, _)| n == p) {
                Some((_, list)) => texts.extend(list.iter().copied()),
                None => problems.push(format!(
                    "data.augment.preset: unknown preset {p:?}; use {}",
                    PRESETS.iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>().join(" or ")
                )),
            }
        }
        texts.extend(self.transforms.iter().map(String::as_str));
        let mut out = vec![];
        for t in texts {
            match Transform::parse(t) {
                Ok(t) => out.push(t),
                Err(m) => problems.push(format!("data.augment.transforms: {m}")),
            }
        }
        match self.max_zoom {
            Some(z) if !(1.0..=4.0).contains(&z) => {
                problems.push(format!("data.augment.max_zoom: must be between 1 and 4, got {z}"))
            }
            Some(z) if z > 1.0 => out.push(Transform::Zoom { max: z }),
            _ => {}
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }
}

/// `[tta]`: test-time augmentation of snapshots and the ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtaSpec {
    /// Augmented views per item besides the original; 0 is plain prediction.
    #[serde(default = "default_tta_n")]
    pub n: usize,
    /// `Some(β)`: `lerp(mean of augmented views, original, β)` (fastai v2, β = 0.25);
    /// `None`: the plain mean of the original and the augmented views (fastai 0.7).
    #[serde(default = "default_beta")]
    pub beta: Option<f64>,
}

fn default_tta_n() -> usize {
    4
}
fn default_beta() -> Option<f64> {
    Some(0.25)
}

impl Default for TtaSpec {
    fn default() -> Self {
        TtaSpec { n: default_tta_n(), beta: default_beta() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_parse_to_transforms() {
        assert_eq!(Transform::parse("flip_h"), Ok(Transform::FlipH));
        assert_eq!(Transform::parse("crop_pad:2"), Ok(Transform::CropPad { pad: 2 }));
        assert_eq!(Transform::parse("zoom:1.1"), Ok(Transform::Zoom { max: 1.1 }));
        assert_eq!(
            Transform::parse("lighting:0.05"),
            Ok(Transform::Lighting { brightness: 0.05, contrast: 0.05 })
        );
        assert_eq!(
            Transform::parse("lighting:0.1:0.2"),
            Ok(Transform::Lighting { brightness: 0.1, contrast: 0.2 })
        );
    }

    #[test]
    fn bad_strings_say_why() {
        let cases = [
            ("flip", "\"flip\" is not a transform; use flip_h"),
            ("crop_pad", "\"crop_pad\": crop_pad needs a value, e.g. \"crop_pad:4\""),
            ("crop_pad:1.5", "\"crop_pad:1.5\": the padding must be a whole number of pixels ≥ 0"),
            ("zoom:x", "\"zoom:x\": \"x\" is not a number"),
            ("zoom:0.5", "\"zoom:0.5\": the zoom must be between 1 and 4, got 0.5"),
            ("flip_h:1", "\"flip_h:1\": flip_h takes at most 0 value(s)"),
            ("rotate:200", "\"rotate:200\": the angle must be between 0 and 180 degrees, got 200"),
        ];
        for (text, want) in cases {
            let got = Transform::parse(text).unwrap_err();
            assert!(got.starts_with(want), "{text}: {got}");
        }
    }

    #[test]
    fn presets_and_lists_resolve_in_order() {
        let spec = AugmentSpec {
            preset: Some("side_on".into()),
            transforms: vec!["crop_pad:2".into()],
            max_zoom: Some(1.1),
        };
        let t = spec.resolve().unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[2], Transform::FlipH);
        assert_eq!(t[3], Transform::CropPad { pad: 2 });
        assert_eq!(t[4], Transform::Zoom { max: 1.1 });
        for (name, _) in PRESETS {
            assert!(AugmentSpec { preset: Some(name.to_string()), ..Default::default() }.resolve().is_ok());
        }
        let e =
            AugmentSpec { preset: Some("upside".into()), transforms: vec!["nope".into()], max_zoom: None }
                .resolve()
                .unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0]
            .starts_with("data.augment.preset: unknown preset \"upside\"; use \"side_on\" or \"top_down\""));
        assert!(e[1].starts_with("data.augment.transforms: \"nope\" is not a transform"));
    }
}
