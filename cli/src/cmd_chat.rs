//! Multi-turn editing (`qie edit --interactive`): each turn edits the previous result. Lines are
//! prompts; commands start with `/` (see HELP). Every turn is saved to the session folder at once,
//! so a session survives a crash and can be reopened or replayed.

use crate::cmd_edit::{check_image_sizes, run_edit, EditArgs};
use crate::image_out::{output_format, write_image};
use crate::numeric_args::{non_negative_f32, positive, seed, steps};
use crate::session::{fresh_name, Session, Turn};
use qie_models::pipeline::EditPipeline;
use qie_models::preprocess::load_rgb;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

const HELP: &str = "\
  <text>            edit the current image(s) with this instruction
  /undo             drop the last turn (the image before it becomes current)
  /history          list the turns
  /image PATH ...   switch to these input images
  /add PATH         add a reference image to the current ones
  /save PATH        copy the current (last) image to PATH
  /seed N  /steps N  /cfg X  /negative TEXT  /size WxH|auto   change settings for next turns
  /help  /quit";

pub fn run_interactive(args: EditArgs) -> Result<(), String> {
    let dir = args
        .session
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("qie-session-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let max_pixels = args.sampling.max_pixels;
    let mut session = match Session::open(&dir)? {
        Some(s) => {
            s.settings.check(max_pixels).map_err(|e| {
                format!(
                    "{}: settings: {e}",
                    dir.join(crate::session::FILE).display()
                )
            })?;
            eprintln!("reopened {} ({} turns)", dir.display(), s.turns.len());
            s
        }
        None => {
            let mut s = Session {
                model: args.pipeline.model.clone(),
                loras: args.pipeline.loras.clone(),
                settings: args.sampling.checked_settings("")?,
                ..Session::default()
            };
            for image in &args.images {
                let name = s.import_image(&dir, image)?;
                s.current.push(name);
            }
            s.save(&dir)?;
            s
        }
    };
    let pipeline = args.pipeline.load()?;
    eprintln!("session folder {}; type /help for commands", dir.display());
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("qie> ");
        std::io::stderr().flush().ok();
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match command(&mut session, &dir, &pipeline, max_pixels, line) {
            Ok(Flow::Continue) => session.save(&dir)?,
            Ok(Flow::Quit) => break,
            // A failed command leaves the session as it was; the user can go on.
            Err(message) => eprintln!("error: {message}"),
        }
    }
    session.save(&dir)
}

enum Flow {
    Continue,
    Quit,
}

fn command(
    session: &mut Session,
    dir: &Path,
    pipeline: &EditPipeline,
    max_pixels: usize,
    line: &str,
) -> Result<Flow, String> {
    let (cmd, rest) = match line.strip_prefix('/') {
        Some(c) => c.split_once(' ').map_or((c, ""), |(a, b)| (a, b.trim())),
        None => return turn(session, dir, pipeline, max_pixels, line).map(|_| Flow::Continue),
    };
    // The flags' parsers, so `/cfg nan` is refused as `--cfg nan` is.
    fn checked<T>(cmd: &str, rest: &str, parsed: Result<T, String>) -> Result<T, String> {
        parsed.map_err(|e| format!("/{cmd} {rest}: {e}"))
    }
    match cmd {
        "quit" | "exit" | "q" => return Ok(Flow::Quit),
        "help" => eprintln!("{HELP}"),
        "history" => {
            for (i, t) in session.turns.iter().enumerate() {
                eprintln!(
                    "{:>3}. {} -> {} (seed {}, {} steps, cfg {})",
                    i + 1,
                    t.settings.prompt,
                    t.output,
                    t.settings.seed,
                    t.settings.steps,
                    t.settings.cfg
                );
            }
            eprintln!("current: {}", session.current.join(", "));
        }
        "undo" => {
            let turn = session.turns.pop().ok_or("nothing to undo")?;
            session.current = turn.previous;
            eprintln!(
                "undid `{}`; current: {}",
                turn.settings.prompt,
                session.current.join(", ")
            );
        }
        "image" | "add" => {
            if rest.is_empty() {
                return Err(format!("/{cmd} needs a path"));
            }
            let mut names = Vec::new();
            for path in rest.split_whitespace() {
                names.push(session.import_image(dir, Path::new(path))?);
            }
            if cmd == "image" {
                session.current = names;
            } else {
                session.current.extend(names);
            }
            eprintln!("current: {}", session.current.join(", "));
        }
        "save" => {
            if rest.is_empty() {
                return Err("/save needs a path".into());
            }
            output_format("/save", Path::new(rest))?;
            let last = session.current.last().ok_or("no current image")?;
            let image = load_rgb(dir.join(last)).map_err(|e| e.to_string())?;
            write_image("/save", Path::new(rest), &image)?;
            eprintln!("saved {rest}");
        }
        "seed" => session.settings.seed = checked(cmd, rest, seed(rest))?,
        "steps" => session.settings.steps = checked(cmd, rest, steps(rest))?,
        "cfg" => session.settings.cfg = checked(cmd, rest, non_negative_f32(rest))?,
        "negative" => session.settings.negative_prompt = Some(rest.to_string()),
        "size" => {
            let (w, h) = match rest {
                "auto" => (None, None),
                _ => {
                    let (w, h) = rest.split_once('x').ok_or("/size needs WxH or auto")?;
                    (
                        Some(checked(cmd, rest, positive(w))?),
                        Some(checked(cmd, rest, positive(h))?),
                    )
                }
            };
            let mut settings = session.settings.clone();
            (settings.width, settings.height) = (w, h);
            settings
                .check(max_pixels)
                .map_err(|e| format!("/size: {e}"))?;
            session.settings = settings;
        }
        other => return Err(format!("unknown command /{other} (try /help)")),
    }
    Ok(Flow::Continue)
}

/// Runs one edit of the current images and makes its result current.
fn turn(
    session: &mut Session,
    dir: &Path,
    pipeline: &EditPipeline,
    max_pixels: usize,
    prompt: &str,
) -> Result<(), String> {
    if session.current.is_empty() {
        return Err("no input image: use /image PATH".into());
    }
    let mut settings = session.settings.clone();
    settings.prompt = prompt.to_string();
    let output_name = fresh_name(dir, "turn", "png");
    let output = edit_files(pipeline, dir, &session.current, &settings, max_pixels)?;
    crate::cmd_edit::save_output(
        &dir.join(&output_name),
        &output,
        &settings,
        &Session::paths(Path::new(""), &session.current),
    )?;
    eprintln!(
        "{}\nturn {} -> {}",
        output.times.report(),
        session.turns.len() + 1,
        output_name
    );
    let previous = std::mem::replace(&mut session.current, vec![output_name.clone()]);
    session.turns.push(Turn {
        settings,
        inputs: previous.clone(),
        output: output_name,
        previous,
    });
    Ok(())
}

fn edit_files(
    pipeline: &EditPipeline,
    dir: &Path,
    names: &[String],
    settings: &qie_models::pipeline::EditSettings,
    max_pixels: usize,
) -> Result<qie_models::pipeline::EditOutput, String> {
    let images = names
        .iter()
        .map(|n| load_rgb(dir.join(n)).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    check_image_sizes(settings, &images, max_pixels)?;
    run_edit(pipeline, &images, settings, None)
}

/// `qie edit --replay DIR`: re-runs every turn of a session from its recorded inputs and settings
/// into DIR/replay/ and reports whether each result is identical to the recorded one. Every
/// turn's settings are checked before the model loads.
pub fn replay(dir: &Path, args: &EditArgs) -> Result<(), String> {
    let session = Session::open(dir)?
        .ok_or_else(|| format!("{}: no {}", dir.display(), crate::session::FILE))?;
    let max_pixels = args.sampling.max_pixels;
    for (i, t) in session.turns.iter().enumerate() {
        t.settings.check(max_pixels).map_err(|e| {
            let file = dir.join(crate::session::FILE);
            format!("{}: turn {}: {e}", file.display(), i + 1)
        })?;
    }
    let pipeline = args.pipeline.load()?;
    let out_dir = dir.join("replay");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut differing = 0;
    for (i, t) in session.turns.iter().enumerate() {
        // Inputs that were outputs of earlier turns come from the replayed files.
        let resolved: Vec<String> = t
            .inputs
            .iter()
            .map(|n| {
                if out_dir.join(n).exists() {
                    format!("replay/{n}")
                } else {
                    n.clone()
                }
            })
            .collect();
        let output = edit_files(&pipeline, dir, &resolved, &t.settings, max_pixels)?;
        crate::cmd_edit::save_output(&out_dir.join(&t.output), &output, &t.settings, &[])?;
        let recorded = load_rgb(dir.join(&t.output)).map_err(|e| e.to_string())?;
        let same = recorded.as_raw() == output.image.as_raw();
        differing += usize::from(!same);
        eprintln!(
            "turn {}: {} -> replay/{} {}",
            i + 1,
            t.settings.prompt,
            t.output,
            if same { "identical" } else { "DIFFERS" }
        );
    }
    if differing > 0 {
        return Err(format!(
            "{differing} replayed turn(s) differ from the recorded results"
        ));
    }
    Ok(())
}
