//! Validation edits during `qie train`: every `[validation] every` steps and after the last one,
//! each named cache row's prompt and control images go through the edit pipeline's own loop
//! ([`EditStages`]: text encoder, true CFG, scheduler, VAE decode, what `qie edit` runs) with the
//! DiT being trained, borrowed as it is (no copy, no reload), at the row's cached target size.
//! The outputs land in `OUT/validation/step-<step>/row-<i>.png`, with `grid.png` (each row's
//! control images, then its output) beside them, and in TensorBoard as `validation/row-<i>`.

use super::config::ValidationSection;
use crate::cache::{Cache, CacheSettings};
use crate::data::read_training_rows;
use crate::hub::ModelPaths;
use crate::pipeline::{EditOutput, EditSettings, EditStages};
use crate::preprocess::load_rgb;
use crate::preprocess::qwen2vl_image::ImageBackend;
use crate::qwen25vl::PositionMode;
use crate::qwen_image::QwenImageDit;
use crate::tensorboard::EventWriter;
use crate::{ModelError, ModelOptions};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};

/// The encoders, the rows and their settings, loaded once when the run starts.
pub struct Validation {
    every: u64,
    stages: EditStages,
    rows: Vec<ValidationRow>,
}

/// One cache row as the validation edit sees it.
pub struct ValidationRow {
    /// Cache row (0-based), as `[validation] rows` names it.
    pub row: usize,
    /// "data.jsonl:12".
    pub source: String,
    pub inputs: Vec<RgbImage>,
    pub settings: EditSettings,
}

/// What one validation edit produced.
pub struct ValidationImage {
    pub row: usize,
    pub path: PathBuf,
    pub output: EditOutput,
}

impl Validation {
    /// Checks the rows against the cache, reads their prompts and control images from the
    /// cache's dataset, then loads the text encoder and the VAE from `paths` (the model folder
    /// the run trains).
    pub fn prepare(
        section: &ValidationSection,
        cache: &Cache,
        paths: &ModelPaths,
        options: &ModelOptions,
    ) -> Result<Validation, ModelError> {
        section.check().map_err(ModelError::new)?;
        let rows = read_rows(section, cache)?;
        let mut stages = EditStages::load(paths, options).map_err(|e| {
            e.context("[validation] edits with the model folder's text encoder and VAE")
        })?;
        let cached = &cache.manifest().settings;
        if cached.text_positions == "sequential" {
            stages.set_text_positions(PositionMode::Sequential);
        }
        if cached.vl_resize == "pil" {
            stages.set_vl_resize(ImageBackend::Pil);
        }
        Ok(Validation {
            every: section.every,
            stages,
            rows,
        })
    }

    /// Whether step `step` (1-based) of a run of `total` steps validates.
    pub fn is_due(&self, step: u64, total: u64) -> bool {
        step.is_multiple_of(self.every) || step == total
    }

    pub fn rows(&self) -> &[ValidationRow] {
        &self.rows
    }

    /// Edits every row with `dit`, writes the images and the grid under
    /// `out/validation/step-<step>/` and logs each image to `events`.
    pub fn run(
        &self,
        dit: &QwenImageDit,
        step: u64,
        out: &Path,
        events: &mut EventWriter,
    ) -> Result<Vec<ValidationImage>, ModelError> {
        let dir = out.join("validation").join(format!("step-{step}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ModelError::new(format!("{}: {e}", dir.display())))?;
        let mut images = Vec::with_capacity(self.rows.len());
        for r in &self.rows {
            let output = self
                .stages
                .edit(dit, &r.inputs, &r.settings, None, &mut |_, _| {})
                .map_err(|e| {
                    e.context(&format!(
                        "[validation] row {} ({}) at step {step}",
                        r.row, r.source
                    ))
                })?;
            let path = dir.join(format!("row-{}.png", r.row));
            save_png(&output.image, &path)?;
            events.image(
                &format!("validation/row-{}", r.row),
                step as i64,
                &output.image,
            )?;
            images.push(ValidationImage {
                row: r.row,
                path,
                output,
            });
        }
        let strips: Vec<(&[RgbImage], &RgbImage)> = self
            .rows
            .iter()
            .zip(&images)
            .map(|(r, v)| (r.inputs.as_slice(), &v.output.image))
            .collect();
        save_png(&grid(&strips), &dir.join("grid.png"))?;
        events.flush()?;
        Ok(images)
    }
}

/// Each named row's prompt and control images (from the dataset the cache was made from) and
/// the settings of its edit: the cached target size, the cache's VAE and VL areas.
fn read_rows(section: &ValidationSection, cache: &Cache) -> Result<Vec<ValidationRow>, ModelError> {
    let manifest = cache.manifest();
    for &row in &section.rows {
        if row >= cache.len() {
            return Err(ModelError::new(format!(
                "[validation] rows: row {row} is past the end of the cache {} ({} rows, 0-based)",
                cache.dir().display(),
                cache.len()
            )));
        }
    }
    let dataset = PathBuf::from(&manifest.dataset.path);
    let (dataset_rows, _) = read_training_rows(&dataset).map_err(|e| {
        e.context(&format!(
            "[validation] rows: the cache's dataset (recorded in {}) holds each row's control images",
            cache.dir().join("manifest.json").display()
        ))
    })?;
    let mut rows = Vec::with_capacity(section.rows.len());
    for &row in &section.rows {
        let entry = &manifest.rows[row];
        let found = dataset_rows.iter().find(|r| r.index == entry.index);
        let data = match found {
            Some(d) if d.prompt == entry.prompt => d,
            _ => {
                return Err(ModelError::new(format!(
                    "[validation] rows: cache row {row} ({}) is not in {} any more (the dataset \
                     changed since `qie cache`); cache it again",
                    entry.source,
                    dataset.display()
                )))
            }
        };
        if data.inputs.is_empty() {
            return Err(ModelError::new(format!(
                "[validation] rows: cache row {row} ({}) has no control image (`edit_image`); \
                 the edit pipeline needs at least one",
                entry.source
            )));
        }
        let inputs = data
            .inputs
            .iter()
            .map(load_rgb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.context(&format!("[validation] row {row} ({})", entry.source)))?;
        let [_, h, w] = entry.target_grid;
        rows.push(ValidationRow {
            row,
            source: entry.source.clone(),
            inputs,
            settings: edit_settings(section, &entry.prompt, (w * 16, h * 16), &manifest.settings),
        });
    }
    Ok(rows)
}

/// `qie edit --prompt P --width W --height H --vae-area A --vl-area V --steps --cfg --seed`.
fn edit_settings(
    section: &ValidationSection,
    prompt: &str,
    (width, height): (usize, usize),
    cached: &CacheSettings,
) -> EditSettings {
    EditSettings {
        prompt: prompt.to_string(),
        steps: section.steps,
        cfg: section.cfg,
        seed: section.seed,
        width: Some(width),
        height: Some(height),
        vae_area: Some(cached.size.effective_area()),
        vl_area: Some(cached.vl_area),
        ..EditSettings::default()
    }
}

/// One strip per row (its control images scaled to the output's height, then the output),
/// strips stacked top to bottom on a white canvas.
fn grid(strips: &[(&[RgbImage], &RgbImage)]) -> RgbImage {
    let rendered: Vec<Vec<RgbImage>> = strips
        .iter()
        .map(|(inputs, output)| {
            let h = output.height();
            let mut tiles: Vec<RgbImage> = inputs
                .iter()
                .map(|i| {
                    let w = (i.width() as u64 * h as u64 / i.height().max(1) as u64).max(1);
                    image::imageops::resize(i, w as u32, h, FilterType::Triangle)
                })
                .collect();
            tiles.push((*output).clone());
            tiles
        })
        .collect();
    let width = rendered
        .iter()
        .map(|t| t.iter().map(RgbImage::width).sum::<u32>())
        .max()
        .unwrap_or(1);
    let height = rendered.iter().map(|t| t[0].height()).sum::<u32>().max(1);
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y = 0;
    for tiles in &rendered {
        let mut x = 0;
        for t in tiles {
            image::imageops::replace(&mut canvas, t, x as i64, y as i64);
            x += t.width();
        }
        y += tiles[0].height();
    }
    canvas
}

fn save_png(img: &RgbImage, path: &Path) -> Result<(), ModelError> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_puts_inputs_then_output_on_each_row() {
        let red = RgbImage::from_pixel(8, 4, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(6, 6, Rgb([0, 0, 255]));
        let green = RgbImage::from_pixel(4, 2, Rgb([0, 255, 0]));
        let g = grid(&[
            (std::slice::from_ref(&red), &blue),
            (std::slice::from_ref(&blue), &green),
        ]);
        // Row 1: red scaled to 12x6, blue 6x6; row 2: blue scaled to 2x2, green 4x2.
        assert_eq!((g.width(), g.height()), (18, 8));
        assert_eq!(g.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(g.get_pixel(12, 0).0, [0, 0, 255]);
        assert_eq!(g.get_pixel(0, 7).0, [0, 0, 255]);
        assert_eq!(g.get_pixel(2, 7).0, [0, 255, 0]);
        assert_eq!(g.get_pixel(10, 7).0, [255, 255, 255]);
    }
}
