//! Qwen2.5-VL vision tower driver: reads the tower's weights out of a text_encoder/ folder (under
//! `visual.` or `model.visual.`, whichever the checkpoint uses), computes the attention segments from
//! image_grid_thw, and runs qwen25vl_vision.qie through the generic [`DslModel`], compiled once per
//! grid list.

use super::window_index::{frame_segments, patch_count, window_segments, GridThw, PaddedSegments};
use crate::dsl_model::{
    config_json, open_store, static_int_rows, DslModel, DslProgram, DslSource, ShapeKey,
    Specialisation,
};
use crate::{HostWeights, ModelError, ModelOptions};
use qie_ir::{DType, Graph, TensorType};
use qie_runtime::weights::CheckMode;
use qie_runtime::Tensor;
use std::collections::HashMap;
use std::path::Path;

pub use super::vision_config::VisionConfig;

/// The bundled model source.
pub const SOURCE: &str = "qwen25vl_vision.qie";

/// Checkpoint prefixes of the tower: transformers >= 4.52 nests it in `model`, older saves do not.
const PREFIXES: [&str; 2] = ["model.visual.", "visual."];

/// Plans are keyed by the image grids (they fix every shape and the attention segments).
impl ShapeKey for Vec<GridThw> {}

pub struct QwenVisionTower {
    pub config: VisionConfig,
    model: DslModel<Vec<GridThw>>,
}

impl QwenVisionTower {
    /// Loads the tower from a text_encoder/ folder (config.json with `vision_config` + safetensors of
    /// the whole Qwen2_5_VLForConditionalGeneration, sharded or not; the language model is ignored).
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self, ModelError> {
        let config_path = config_json(dir, "a Qwen2.5-VL text_encoder/ folder")?;
        let config = VisionConfig::load(&config_path)?;
        let program = vision_program(&config, options.source.as_deref())?;
        let probe = probe(&config)?;
        let store = open_store(dir)?;
        let prefix = PREFIXES
            .into_iter()
            .find(|p| store.names().iter().any(|n| n.starts_with(p)))
            .ok_or_else(|| {
                ModelError::new(format!(
                    "{}: no vision tower weights (no tensor named `model.visual.*` or `visual.*`)",
                    dir.display()
                ))
            })?;
        let mode = CheckMode::AllowUnexpected;
        let model = DslModel::load(program, &probe, &store, prefix, mode, options)?;
        Ok(QwenVisionTower { config, model })
    }

    /// Builds the tower from weights already in memory, named relative to the tower
    /// (`blocks.0.attn.qkv.weight`).
    pub fn from_weights(
        config: VisionConfig,
        weights: HostWeights,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let program = vision_program(&config, options.source.as_deref())?;
        let model = DslModel::from_weights(program, &probe(&config)?, weights, "", options)?;
        Ok(QwenVisionTower { config, model })
    }

    /// Weight names (relative to the tower) and shapes the bundled source reads for `config`.
    pub fn expected_weights(
        config: &VisionConfig,
    ) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        vision_program(config, None)?.param_shapes(&probe(config)?)
    }

    /// pixel_values [N, C·T·P·P] f32 (the image processor's rows, images one after another) and each
    /// image's (t, h, w) in patches -> image embeds [N / merge², out_hidden_size], in the same order.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        grid_thw: &[[usize; 3]],
    ) -> Result<Tensor, ModelError> {
        validate(&self.config, pixel_values, grid_thw)?;
        let pixel_values = pixel_values.cast(DType::F32);
        let inputs = VisionInputs::new(&self.config, pixel_values, grid_thw)?;
        self.model
            .forward(
                &grid_thw.to_vec(),
                &inputs.specialisation(grid_thw),
                &inputs.bindings,
            )?
            .take("image_embeds")
    }

    /// Lowers the tower for these grids (IR before optimisation), e.g. for dumps and FLOP counts.
    pub fn lower(&self, grid_thw: &[[usize; 3]]) -> Result<Graph, ModelError> {
        let n = patch_count(grid_thw);
        let probe = Tensor::zeros(TensorType::new(DType::F32, &[n, self.config.patch_dim()]));
        validate(&self.config, &probe, grid_thw)?;
        let inputs = VisionInputs::new(&self.config, probe, grid_thw)?;
        self.model.program().lower(&inputs.specialisation(grid_thw))
    }

    /// The backend's name (`cpu`, `cuda:0`, ...).
    pub fn backend_name(&self) -> &str {
        self.model.backend_name()
    }
}

/// The graph inputs for one call: pixel values and the padded attention segments.
struct VisionInputs {
    bindings: HashMap<String, Tensor>,
}

impl VisionInputs {
    fn new(
        config: &VisionConfig,
        pixel_values: Tensor,
        grid_thw: &[GridThw],
    ) -> Result<Self, ModelError> {
        let total = patch_count(grid_thw);
        let mut bindings = HashMap::new();
        bindings.insert("pixel_values".to_string(), pixel_values);
        let windows = window_segments(grid_thw, config.spatial_merge_size, config.window_units());
        insert_segments(
            &mut bindings,
            "window",
            &PaddedSegments::new(&windows, total),
        )?;
        // One frame in all: the full-attention blocks attend over every patch, no regrouping needed.
        let frames = frame_segments(grid_thw);
        if frames.len() > 1 {
            insert_segments(&mut bindings, "frame", &PaddedSegments::new(&frames, total))?;
        }
        Ok(VisionInputs { bindings })
    }

    /// The bindings' types and the grids (a static of the source).
    fn specialisation(&self, grid_thw: &[GridThw]) -> Specialisation {
        Specialisation::of_bindings(&self.bindings)
            .with_static("grid_thw", static_int_rows(grid_thw))
    }
}

fn insert_segments(
    bindings: &mut HashMap<String, Tensor>,
    name: &str,
    s: &PaddedSegments,
) -> Result<(), ModelError> {
    let shape = [s.count, s.max_len];
    let err = |e: qie_runtime::TensorError| ModelError::new(format!("{name} segments: {}", e.0));
    bindings.insert(
        format!("{name}_index"),
        Tensor::from_i32(&shape, s.index.clone()).map_err(err)?,
    );
    bindings.insert(
        format!("{name}_mask"),
        Tensor::from_bool(&shape, s.mask.clone()).map_err(err)?,
    );
    bindings.insert(
        format!("{name}_inverse"),
        Tensor::from_i32(&[s.inverse.len()], s.inverse.clone()).map_err(err)?,
    );
    Ok(())
}

fn validate(
    config: &VisionConfig,
    pixel_values: &Tensor,
    grid_thw: &[GridThw],
) -> Result<(), ModelError> {
    let shape = pixel_values.shape();
    let patch_dim = config.patch_dim();
    if shape.len() != 2 || shape[1] != patch_dim {
        return Err(ModelError::new(format!(
            "pixel_values must be [patches, {patch_dim}] (channels x temporal_patch x patch x patch), got {shape:?}"
        )));
    }
    if !matches!(pixel_values.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return Err(ModelError::new(format!(
            "pixel_values must be floating point, got {}",
            pixel_values.dtype()
        )));
    }
    if grid_thw.is_empty() {
        return Err(ModelError::new("image_grid_thw is empty (no image)"));
    }
    let merge = config.spatial_merge_size;
    for (i, g) in grid_thw.iter().enumerate() {
        if g.contains(&0) || !g[1].is_multiple_of(merge) || !g[2].is_multiple_of(merge) {
            return Err(ModelError::new(format!(
                "image_grid_thw[{i}] = {g:?}: t, h, w must be positive and h, w multiples of \
                 spatial_merge_size {merge}"
            )));
        }
    }
    let total = patch_count(grid_thw);
    if total != shape[0] {
        return Err(ModelError::new(format!(
            "image_grid_thw {grid_thw:?} covers {total} patches but pixel_values has {} rows",
            shape[0]
        )));
    }
    Ok(())
}

fn vision_program(config: &VisionConfig, source: Option<&Path>) -> Result<DslProgram, ModelError> {
    DslProgram::load(
        "vision tower",
        DslSource::new(SOURCE, source),
        config.for_dsl(),
    )
}

/// One merge unit, to list the weights with (they do not depend on the shapes).
fn probe(config: &VisionConfig) -> Result<Specialisation, ModelError> {
    let m = config.spatial_merge_size;
    let grid = [[1, m, m]];
    let probe = Tensor::zeros(TensorType::new(DType::F32, &[m * m, config.patch_dim()]));
    Ok(VisionInputs::new(config, probe, &grid)?.specialisation(&grid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources;
    use qie_ir::dsl::Program;
    use qie_runtime::{Backend, CompileOptions};

    /// The real tower (Qwen2.5-VL-7B widths, 32 blocks) lowers for a 1036² image: 5476 patches, 100
    /// windows, 1369 output tokens of 3584.
    #[test]
    fn real_config_lowers_for_a_1036_image() {
        let config = VisionConfig::default();
        let grid = [[1, 74, 74]];
        let probe = Tensor::zeros(TensorType::new(DType::F32, &[5476, config.patch_dim()]));
        let inputs = VisionInputs::new(&config, probe, &grid).unwrap();
        assert_eq!(inputs.bindings["window_index"].shape(), &[100, 64]);
        assert!(!inputs.bindings.contains_key("frame_index"));
        let graph = vision_program(&config, None)
            .unwrap()
            .lower(&inputs.specialisation(&grid))
            .unwrap();
        let out = graph.output("image_embeds").unwrap();
        assert_eq!(graph.ty(out).shape.to_vec(), vec![1369, 3584]);
        assert_eq!(graph.params().len(), 32 * 12 + 1 + 5);
    }

    /// The source's `erf` (exact GELU's building block; the IR has no Erf op) against math.erf.
    #[test]
    fn dsl_erf_matches_libm_to_f32_precision() {
        let cases: [(f32, f64); 27] = [
            (-7.0, -1.0),
            (-4.5, -0.9999999998033839),
            (-3.1, -0.999988351335417),
            (-2.0, -0.9953222650189527),
            (-1.3, -0.9340079350125213),
            (-1.0, -0.8427007929497149),
            (-0.9, -0.7969082004549685),
            (-0.5, -0.5204998778130465),
            (-0.1, -0.11246291768297051),
            (-0.001, -0.0011283788445643173),
            (0.0, 0.0),
            (0.0002, 0.00022567582470904058),
            (0.05, 0.05637197863562547),
            (0.3, 0.32862677175271543),
            (0.8, 0.7421009718004437),
            (0.84375, 0.7672256612323416),
            (0.86, 0.7761002760280167),
            (1.1, 0.8802050775963802),
            (1.25, 0.9229001282564582),
            (1.7, 0.9837904615810698),
            (2.5, 0.999593047982555),
            (2.857, 0.9999466417761234),
            (2.86, 0.9999475987937744),
            (3.5, 0.9999992569016276),
            (4.2, 0.9999999971445012),
            (5.9, 0.9999999999999999),
            (6.5, 1.0),
        ];
        let root = "import \"qwen25vl_vision.qie\";\n\
                    module ErfProbe() { fn forward(x: f32[N]) { output y = erf(x); } }\n\
                    entry ErfProbe;\n";
        let program = Program::from_sources("probe.qie", &|name| {
            if name == "probe.qie" {
                Some(root.to_string())
            } else {
                sources::bundled(name).map(str::to_string)
            }
        })
        .unwrap();
        let x: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let ty = TensorType::new(DType::F32, &[x.len()]);
        let graph = program
            .lower(
                &VisionConfig::default().for_dsl(),
                &[("x".to_string(), ty)],
                &[],
            )
            .unwrap();
        let cpu = qie_runtime::cpu::CpuBackend;
        let exe = cpu.compile(&graph, &CompileOptions::default()).unwrap();
        let inputs = HashMap::from([(
            "x".to_string(),
            Tensor::from_f32(&[x.len()], x.clone()).unwrap(),
        )]);
        let y = exe.run(&inputs, &HostWeights::default()).unwrap()["y"].to_f32_vec();
        for ((xi, want), got) in cases.iter().zip(&y) {
            let err = (*got as f64 - want).abs();
            assert!(
                err < 1.2e-7,
                "erf({xi}) = {got}, expected {want} (error {err:.2e})"
            );
        }
    }
}
