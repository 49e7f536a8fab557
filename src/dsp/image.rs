//! Image preparation for the visual encoder: packed RGB8 frame → normalised CHW `[3, size, size]`
//! f32.
//!
//! The recipe is torchvision's `Resize(size, BICUBIC)` → `CenterCrop(size)` → `ToTensor()` →
//! `Normalize(mean, std)` on a PIL image, which is how CLIP (and most ImageNet models) were
//! trained. It is reproduced exactly, not approximately, because the encoders were only ever
//! shown PIL's pixels:
//!
//! - **Resize** the short side to `size`, the long side to `floor(size·long/short)`, with PIL's
//!   `ImagingResample` (`Resample.c`): a separable bicubic (a = -0.5) whose support widens by
//!   the scale factor when downscaling (antialiasing), coefficients normalised in f64 and then
//!   rounded to 22-bit fixed point, the horizontal pass first, and the result rounded and
//!   clamped to u8 *between* the passes and at the end.
//! - **Centre crop** at `round((resized - size) / 2)` with Python's `round` (half to even).
//!   Only the cropped pixels are computed: the horizontal pass produces just the cropped
//!   columns for just the source rows the cropped rows read, so nothing is thrown away.
//! - **Normalise** `(v / 255 - mean) / std` in f32 through a 256-entry table per channel,
//!   which is the same f32 arithmetic torchvision does, value for value.
//!
//! With PIL's decoded pixels this is bit-exact; the remaining error against the golden comes
//! from the JPEG decoder (see `tests/dsp.rs`).
//!
//! Allocation: [`ImagePrep::process`] does not allocate while frames keep the same width and
//! height. A new size rebuilds the coefficient tables and the intermediate buffer once; they
//! keep their capacity, so going back to a size seen before (or a smaller one) is free too.

use std::path::Path;

use super::DspError;

/// CLIP's per-channel mean (OpenAI `clip/clip.py`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel std.
// The digits are kept as published, so they can be checked against `clip.py` by eye; the
// extra ones round to the same f32.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// ImageNet's per-channel mean (torchvision's reference models).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel std.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// PIL's fixed-point precision for 8-bit images: 32 bits less 8 for the pixel and 2 for the
/// sign and the bicubic overshoot, so `255 · Σ|k| · 2^22` stays inside an `i32`.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Added before the final shift so it rounds to nearest (PIL starts every sum here).
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);
/// The bicubic kernel is non-zero on (-2, 2).
const BICUBIC_SUPPORT: f64 = 2.0;

/// What [`ImagePrep`] produces: a `size`×`size` crop normalised with `mean` and `std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImagePrepConfig {
    /// Side of the square output, in pixels (224 for CLIP ViT-B and EfficientNet-Lite0).
    pub size: usize,
    /// Per-channel mean, RGB order, on the 0–1 scale.
    pub mean: [f32; 3],
    /// Per-channel std, RGB order, on the 0–1 scale.
    pub std: [f32; 3],
}

impl ImagePrepConfig {
    /// CLIP's preprocessing at `size`.
    pub const fn clip(size: usize) -> Self {
        ImagePrepConfig {
            size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// ImageNet's preprocessing at `size`.
    pub const fn imagenet(size: usize) -> Self {
        ImagePrepConfig {
            size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// A decoded picture: packed RGB8 rows, no padding (`stride = width·3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `[height, width, 3]` u8.
    pub data: Vec<u8>,
}

impl Rgb8Image {
    /// Bytes from one row to the next (rows are packed).
    pub fn stride_bytes(&self) -> usize {
        self.width * 3
    }
}

/// Decodes a JPEG or PNG file (format sniffed from its content) into packed RGB8; grey and
/// alpha images are converted, as PIL's `convert("RGB")` does. EXIF orientation is *not*
/// applied, matching `PIL.Image.open`. This is the one I/O function in `dsp`, for the CLI's
/// photo path; the live path gets frames from capture.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<Rgb8Image, DspError> {
    let path = path.as_ref();
    let decode_err = |source| DspError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let img = ::image::ImageReader::open(path)
        .map_err(|e| decode_err(e.into()))?
        .with_guessed_format()
        .map_err(|e| decode_err(e.into()))?
        .decode()
        .map_err(decode_err)?
        .into_rgb8();
    let (width, height) = (img.width() as usize, img.height() as usize);
    Ok(Rgb8Image {
        width,
        height,
        data: img.into_raw(),
    })
}

/// PIL's `bicubic_filter` with a = -0.5 (Keys' kernel, the one PIL and torchvision's PIL path
/// use; OpenCV's a = -0.75 gives visibly sharper pixels).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `clip8`: drop the fraction bits (arithmetic shift, so negatives floor) and clamp.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Python's `round(d / 2)` for a whole `d`: halves go to the even neighbour.
fn half_rounded_to_even(d: usize) -> usize {
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 { k + 1 } else { k }
}

/// Fixed-point taps of one resize pass, for a contiguous run of output positions.
#[derive(Debug, Default)]
struct Taps {
    /// Slots per output position (PIL's `ksize`); unused slots are zero.
    ksize: usize,
    /// Per output position: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `[outputs, ksize]`, scaled by `2^PRECISION_BITS`.
    weights: Vec<i32>,
}

impl Taps {
    /// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `in_size` to
    /// `out_size`, kept only for outputs `first_out..first_out + count` (the crop). Reuses the
    /// vectors' capacity.
    fn plan(&mut self, in_size: usize, out_size: usize, first_out: usize, count: usize) {
        let scale = in_size as f64 / out_size as f64;
        // Downscaling widens the kernel by the scale factor (antialiasing); upscaling does not.
        let filter_scale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filter_scale;
        let inv_scale = 1.0 / filter_scale;
        self.ksize = support.ceil() as usize * 2 + 1;
        self.bounds.clear();
        self.weights.clear();
        self.weights.resize(count * self.ksize, 0);

        for (i, out_pos) in (first_out..first_out + count).enumerate() {
            let center = (out_pos as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, like PIL's `(int)` casts.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = hi.saturating_sub(lo).min(self.ksize);
            // Multiplying by the reciprocal (not dividing) is PIL's arithmetic, to the last bit.
            let tap = |x: usize| bicubic((x as f64 + lo as f64 - center + 0.5) * inv_scale);
            let total: f64 = (0..n).map(tap).sum();
            let slots = &mut self.weights[i * self.ksize..i * self.ksize + n];
            for (x, slot) in slots.iter_mut().enumerate() {
                let w = if total != 0.0 { tap(x) / total } else { tap(x) };
                // Round half away from zero, as `(int)(±0.5 + w · 2^22)` does.
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *slot = (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32;
            }
            self.bounds.push((lo, n));
        }
    }

    fn weights_of(&self, i: usize) -> &[i32] {
        let (_, n) = self.bounds[i];
        &self.weights[i * self.ksize..i * self.ksize + n]
    }
}

/// The geometry and tables for one input size.
#[derive(Debug, Default)]
struct Plan {
    /// `(width, height)` the tables were built for.
    key: Option<(usize, usize)>,
    /// Output columns of the crop → source columns.
    horizontal: Taps,
    /// Output rows of the crop → rows of `ImagePrep::rows`, i.e. relative to `first_row`.
    vertical: Taps,
    /// First source row the vertical pass reads.
    first_row: usize,
    /// Source rows the horizontal pass must produce.
    n_rows: usize,
}

/// Frame → normalised `[3, size, size]` tensor; see the module docs for the exact recipe.
pub struct ImagePrep {
    config: ImagePrepConfig,
    /// `(v / 255 - mean[c]) / std[c]` for every u8 `v`, per channel.
    lut: [[f32; 256]; 3],
    plan: Plan,
    /// Horizontally resized rows, `[plan.n_rows, size, 3]` u8.
    rows: Vec<u8>,
    /// One output row of the vertical pass, `[size, 3]` fixed point.
    acc: Vec<i32>,
}

impl std::fmt::Debug for ImagePrep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the tables: 768 floats of LUT say nothing useful in a log line.
        f.debug_struct("ImagePrep")
            .field("config", &self.config)
            .field("planned_for", &self.plan.key)
            .finish_non_exhaustive()
    }
}

impl ImagePrep {
    /// Builds the normalisation tables and the row buffers. Fails on a zero `size` or a std
    /// that is not finite and positive.
    pub fn new(config: ImagePrepConfig) -> Result<Self, DspError> {
        if config.size == 0 || !config.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(DspError::BadImageConfig {
                size: config.size,
                std: config.std,
            });
        }
        let mut lut = [[0.0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, x) in table.iter_mut().enumerate() {
                // Same f32 steps as torchvision: ToTensor's `/ 255`, then Normalize.
                *x = (v as f32 / 255.0 - config.mean[c]) / config.std[c];
            }
        }
        Ok(ImagePrep {
            config,
            lut,
            plan: Plan::default(),
            rows: Vec::new(),
            acc: vec![0; config.size * 3],
        })
    }

    /// The configuration this was built with.
    pub fn config(&self) -> &ImagePrepConfig {
        &self.config
    }

    /// Writes the prepared `[3, size, size]` (CHW, RGB) tensor of one frame into `out`.
    ///
    /// `rgb` holds `height` rows of `width` packed RGB8 pixels, each row starting
    /// `stride_bytes` after the previous one (GStreamer pads rows to 4 bytes). Does not
    /// allocate unless the frame size differs from the previous call's (see module docs).
    pub fn process(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        stride_bytes: usize,
        out: &mut [f32],
    ) -> Result<(), DspError> {
        let size = self.config.size;
        if out.len() != 3 * size * size {
            return Err(DspError::ImageOutLen {
                got: out.len(),
                size,
            });
        }
        if width == 0 || height == 0 {
            return Err(DspError::EmptyImage { width, height });
        }
        if stride_bytes < width * 3 {
            return Err(DspError::StrideTooSmall {
                stride_bytes,
                width,
            });
        }
        let needed = (height - 1)
            .saturating_mul(stride_bytes)
            .saturating_add(width * 3);
        if rgb.len() < needed {
            return Err(DspError::RgbTooShort {
                got: rgb.len(),
                needed,
                width,
                height,
                stride_bytes,
            });
        }

        if self.plan.key != Some((width, height)) {
            self.replan(width, height);
        }
        self.horizontal_pass(rgb, width, stride_bytes);
        self.vertical_pass(out);
        Ok(())
    }

    /// Rebuilds the tables for a new frame size (the only allocating path after `new`).
    fn replan(&mut self, width: usize, height: usize) {
        let size = self.config.size;
        // torchvision's Resize(int): the short side becomes `size`, the long side
        // `int(size * long / short)`; integer floor division gives the same number.
        let (resized_w, resized_h) = if width <= height {
            (size, size * height / width)
        } else {
            (size * width / height, size)
        };
        let left = half_rounded_to_even(resized_w - size);
        let top = half_rounded_to_even(resized_h - size);

        let plan = &mut self.plan;
        plan.horizontal.plan(width, resized_w, left, size);
        plan.vertical.plan(height, resized_h, top, size);
        // Vertical windows move monotonically, so the first and last crop rows bound the
        // source rows needed (PIL's `ybox_first`/`ybox_last`, restricted to the crop).
        let (first_lo, _) = plan.vertical.bounds[0];
        let (last_lo, last_n) = plan.vertical.bounds[size - 1];
        plan.first_row = first_lo;
        plan.n_rows = last_lo + last_n - first_lo;
        for (lo, _) in &mut plan.vertical.bounds {
            *lo -= first_lo;
        }
        self.rows.resize(plan.n_rows * size * 3, 0);
        plan.key = Some((width, height));
    }

    /// Source rows → `self.rows`, only the cropped columns, rounded to u8 like PIL's
    /// intermediate image.
    fn horizontal_pass(&mut self, rgb: &[u8], width: usize, stride_bytes: usize) {
        let taps = &self.plan.horizontal;
        let row_bytes = self.config.size * 3;
        for (r, dst_row) in self.rows.chunks_exact_mut(row_bytes).enumerate() {
            let start = (self.plan.first_row + r) * stride_bytes;
            let src = &rgb[start..start + width * 3];
            for (i, dst) in dst_row.chunks_exact_mut(3).enumerate() {
                let (lo, n) = taps.bounds[i];
                let pixels = &src[lo * 3..(lo + n) * 3];
                let (mut r_acc, mut g_acc, mut b_acc) = (ROUNDING, ROUNDING, ROUNDING);
                for (px, &k) in pixels.chunks_exact(3).zip(taps.weights_of(i)) {
                    r_acc += i32::from(px[0]) * k;
                    g_acc += i32::from(px[1]) * k;
                    b_acc += i32::from(px[2]) * k;
                }
                dst[0] = clip8(r_acc);
                dst[1] = clip8(g_acc);
                dst[2] = clip8(b_acc);
            }
        }
    }

    /// `self.rows` → the cropped output rows, rounded to u8, normalised and scattered to CHW.
    fn vertical_pass(&mut self, out: &mut [f32]) {
        let size = self.config.size;
        let row_bytes = size * 3;
        let taps = &self.plan.vertical;
        let (out_r, rest) = out.split_at_mut(size * size);
        let (out_g, out_b) = rest.split_at_mut(size * size);
        for y in 0..size {
            let (lo, _) = taps.bounds[y];
            self.acc.fill(ROUNDING);
            for (t, &k) in taps.weights_of(y).iter().enumerate() {
                let src = &self.rows[(lo + t) * row_bytes..(lo + t + 1) * row_bytes];
                // Contiguous and branch-free: the compiler vectorises this loop.
                for (a, &p) in self.acc.iter_mut().zip(src) {
                    *a += i32::from(p) * k;
                }
            }
            let line = y * size..(y + 1) * size;
            let dst = out_r[line.clone()]
                .iter_mut()
                .zip(&mut out_g[line.clone()])
                .zip(&mut out_b[line]);
            for (((r, g), b), acc) in dst.zip(self.acc.chunks_exact(3)) {
                *r = self.lut[0][usize::from(clip8(acc[0]))];
                *g = self.lut[1][usize::from(clip8(acc[1]))];
                *b = self.lut[2][usize::from(clip8(acc[2]))];
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_kernel_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(-2.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(1.5) + 0.0625).abs() < 1e-12);
    }

    #[test]
    fn python_round_half_to_even() {
        // round(0.5)=0, round(1)=1, round(1.5)=2, round(2.5)=2, round(51)=51 (d = 102).
        let got: Vec<usize> = [1, 2, 3, 5, 102]
            .into_iter()
            .map(half_rounded_to_even)
            .collect();
        assert_eq!(got, [0, 1, 2, 2, 51]);
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        let mut taps = Taps::default();
        taps.plan(640, 298, 37, 224);
        assert_eq!(taps.ksize, 11); // support 2·640/298 = 4.3 → ceil 5 → 11 slots
        for i in 0..224 {
            let sum: i32 = taps.weights_of(i).iter().sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= 11,
                "column {i}: {sum}"
            );
        }
    }

    /// PIL's own output for three small cases, made by (Pillow 13):
    /// ```python
    /// a = np.array([[[(x*37 + y*91 + c*53 + x*y*7) % 256 for c in range(3)] for x in range(w)]
    ///               for y in range(h)], np.uint8)
    /// nw, nh = (s, int(s*h/w)) if w <= h else (int(s*w/h), s)
    /// r = Image.fromarray(a).resize((nw, nh), Image.BICUBIC)
    /// top, left = int(round((nh - s)/2.)), int(round((nw - s)/2.))
    /// np.asarray(r.crop((left, top, left + s, top + s))).transpose(2, 0, 1).flatten()
    /// ```
    /// They cover an antialiased downscale (29×13), a tie in the crop offset that Python
    /// rounds to even (9×4: 2.5 → 2) and an upscale (3×8).
    #[test]
    fn matches_pil_on_small_cases() {
        #[rustfmt::skip]
        let cases: [(usize, usize, [u8; 48]); 3] = [
            // 29x13 -> 8x4, crop at (2, 0)
            (29, 13, [119, 126, 119, 143, 132, 131, 145, 138, 127, 135, 121, 125, 129, 148, 122, 132, 127, 145, 127, 122, 129, 132, 139, 128, 126, 108, 126, 124, 121, 119, 115, 127, 136, 113, 129, 102, 118, 135, 135, 123, 130, 150, 130, 129, 155, 134, 116, 124]),
            // 9x4 -> 9x4, crop at (2, 0)
            (9, 4, [74, 111, 148, 185, 179, 223, 11, 55, 28, 79, 130, 181, 133, 191, 249, 51, 127, 164, 201, 238, 232, 20, 64, 108, 81, 132, 183, 234, 186, 244, 46, 104, 180, 217, 254, 35, 29, 73, 117, 161, 134, 185, 236, 31, 239, 41, 99, 157]),
            // 3x8 -> 4x10, crop at (0, 3)
            (3, 8, [140, 187, 142, 32, 13, 48, 106, 148, 94, 140, 202, 241, 198, 99, 68, 125, 205, 94, 53, 105, 65, 110, 159, 182, 147, 211, 162, 31, 245, 157, 93, 100, 37, 73, 133, 178, 131, 155, 199, 236, 225, 95, 41, 97, 88, 79, 116, 177]),
        ];
        // mean 0, std 1: the output is v / 255, so the u8 PIL produced can be read back.
        let cfg = ImagePrepConfig {
            size: 4,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let mut prep = ImagePrep::new(cfg).unwrap();
        for (w, h, want) in cases {
            let rgb: Vec<u8> = (0..h)
                .flat_map(|y| (0..w).flat_map(move |x| (0..3).map(move |c| (x, y, c))))
                .map(|(x, y, c)| ((x * 37 + y * 91 + c * 53 + x * y * 7) % 256) as u8)
                .collect();
            let mut out = [0.0; 48];
            prep.process(&rgb, w, h, w * 3, &mut out).unwrap();
            let got = out.map(|v| (v * 255.0).round() as u8);
            assert_eq!(got, want, "{w}×{h}");
        }
    }

    #[test]
    fn same_size_is_identity() {
        // 4×4 → 4: the resize is an identity, and a constant image stays constant.
        let cfg = ImagePrepConfig {
            size: 4,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let mut prep = ImagePrep::new(cfg).unwrap();
        let rgb: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
        let mut out = vec![0.0; 48];
        prep.process(&rgb, 4, 4, 12, &mut out).unwrap();
        for y in 0..4 {
            for x in 0..4 {
                for c in 0..3 {
                    let want = f32::from(rgb[y * 12 + x * 3 + c]) / 255.0;
                    assert_eq!(out[c * 16 + y * 4 + x], want);
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let mut prep = ImagePrep::new(ImagePrepConfig::clip(8)).unwrap();
        let rgb = [10u8, 128, 250].repeat(37 * 23);
        let mut out = vec![0.0; 3 * 64];
        prep.process(&rgb, 37, 23, 37 * 3, &mut out).unwrap();
        for (c, v) in [10u8, 128, 250].into_iter().enumerate() {
            let want = (f32::from(v) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            assert!(out[c * 64..(c + 1) * 64].iter().all(|&x| x == want));
        }
    }

    #[test]
    fn bad_config_is_an_error() {
        assert!(
            ImagePrep::new(ImagePrepConfig {
                size: 0,
                ..ImagePrepConfig::clip(1)
            })
            .is_err()
        );
        let zero_std = ImagePrepConfig {
            std: [1.0, 0.0, 1.0],
            ..ImagePrepConfig::clip(4)
        };
        assert!(ImagePrep::new(zero_std).is_err());
    }
}
