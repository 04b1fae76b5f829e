//! A LoRA trained by `qie train` loads unchanged into diffusers (`pipe.load_lora_weights`) and
//! changes the edit as it changes qie's (tools/golden/check_lora_in_diffusers.py). Needs Python
//! with torch and diffusers 0.42.1 (`QIE_PYTHON`, else `python3`); reported ignored where they
//! are missing, so a machine without them never counts it as passed.

mod common;

use libtest_mimic::{Arguments, Trial};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let python = std::env::var("QIE_PYTHON").unwrap_or_else(|_| "python3".into());
    let available = Command::new(&python)
        .args(["-c", "import torch, diffusers, peft"])
        .output()
        .is_ok_and(|o| o.status.success());
    let trial = Trial::test("qie_lora_loads_in_diffusers", move || {
        check(&python).map_err(Into::into)
    })
    .with_ignored_flag(!available);
    if !available {
        eprintln!("qie_lora_loads_in_diffusers: ignored: no Python with torch + diffusers + peft (set QIE_PYTHON)");
    }
    libtest_mimic::run(&args, vec![trial]).exit_code()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed:\n{}\n{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn check(python: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let case = repo().join("tests/fixtures/edit/plus");
    for (from, to) in [
        ("inputs/image_0.png", "a.png"),
        ("inputs/image_1.png", "b.png"),
        ("out.png", "t.png"),
    ] {
        std::fs::copy(case.join(from), d.join(to)).map_err(|e| e.to_string())?;
    }
    std::fs::write(
        d.join("data.jsonl"),
        "{\"prompt\": \"make it blue\", \"image\": \"t.png\", \"edit_image\": [\"a.png\", \"b.png\"]}\n\
         {\"prompt\": \"sunset\", \"image\": \"a.png\", \"edit_image\": [\"b.png\", \"t.png\"]}\n",
    )
    .map_err(|e| e.to_string())?;
    let qie = common::qie_bin();
    let model = case.join("model");
    run(Command::new(&qie)
        .args(["cache", "--model"])
        .arg(&model)
        .arg("--dataset")
        .arg(d.join("data.jsonl"))
        .arg("--out")
        .arg(d.join("cache"))
        .args(["--vae-area", "16384", "--vl-area", "9216"])
        .env_remove("QIE_DEVICE"))?;
    run(Command::new(&qie)
        .args(["train", "--model"])
        .arg(&model)
        .arg("--cache")
        .arg(d.join("cache"))
        .arg("--out")
        .arg(d.join("out"))
        .args(["--lora-rank", "4", "--lr", "1e-2", "--steps", "6"])
        .env_remove("QIE_DEVICE"))?;
    run(Command::new(python)
        .arg(repo().join("tools/golden/check_lora_in_diffusers.py"))
        .arg("--qie")
        .arg(&qie)
        .arg("--lora")
        .arg(d.join("out")))
}
