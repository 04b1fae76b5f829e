//! `index.html`: the summary and breakdown tables, the plots and the gallery, in one file with
//! inline CSS and JavaScript (no CDN); images are relative paths inside the report folder.

use qie_models::eval::Metric;

use super::tables::{cell_text, Table};
use super::Comparison;

/// One gallery row as the page shows it: image paths relative to the report, per-run scores.
pub struct GalleryRow {
    pub index: usize,
    pub prompt: String,
    pub inputs: Vec<Option<String>>,
    pub gt: Option<String>,
    /// Per run: the prediction's thumbnail and its value of every metric.
    pub runs: Vec<(Option<String>, Vec<Option<f64>>)>,
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table_html(c: &Comparison, t: &Table) -> String {
    let mut out = String::from("<table><tr><th>run</th>");
    for m in &c.metrics {
        let arrow = if m.higher_is_better() { "↑" } else { "↓" };
        out.push_str(&format!("<th>{m} {arrow}</th>"));
    }
    out.push_str("</tr>\n");
    for (i, run) in c.runs.iter().enumerate() {
        out.push_str(&format!("<tr><td>{}</td>", escape(&run.name)));
        for (j, cell) in t.cells[i].iter().enumerate() {
            let class = if t.best[j] == Some(i) {
                " class=\"best\""
            } else {
                ""
            };
            out.push_str(&format!("<td{class}>{}</td>", cell_text(cell)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

fn image_cell(src: &Option<String>, caption: &str) -> String {
    match src {
        Some(s) => format!(
            "<figure><img src=\"{}\" loading=\"lazy\"><figcaption>{}</figcaption></figure>",
            escape(s),
            caption
        ),
        None => format!("<figure class=\"gap\"><figcaption>{caption}: none</figcaption></figure>"),
    }
}

fn number(v: Option<f64>) -> String {
    match v.filter(|x| x.is_finite()) {
        Some(x) => format!("{x}"),
        None => "null".into(),
    }
}

pub fn page(
    c: &Comparison,
    tables: &[Table],
    plots: &[(Metric, String, String)],
    gallery: &[GalleryRow],
    notes: &[String],
) -> String {
    let mut h = String::new();
    h.push_str(
        "<!doctype html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <title>qie compare</title>\n<style>\n",
    );
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<h1>qie compare</h1>\n");
    let names: Vec<String> = c.runs.iter().map(|r| escape(&r.name)).collect();
    h.push_str(&format!(
        "<p>{} runs ({}), {} dataset rows. Mean [95% bootstrap interval]; the best run per metric is \
         highlighted.</p>\n",
        c.runs.len(),
        names.join(", "),
        c.rows.len()
    ));
    for n in notes {
        h.push_str(&format!("<p class=\"note\">{}</p>\n", escape(n)));
    }
    h.push_str("<h2>Summary</h2>\n");
    h.push_str(&table_html(c, &tables[0]));
    if tables.len() > 1 {
        h.push_str(&format!(
            "<h2>By {}</h2>\n",
            escape(c.group_by.as_deref().unwrap_or(""))
        ));
        for t in &tables[1..] {
            h.push_str(&format!(
                "<h3>{} ({} rows)</h3>\n",
                escape(t.group.as_deref().unwrap_or("")),
                t.rows
            ));
            h.push_str(&table_html(c, t));
        }
    }
    h.push_str("<h2>Plots</h2>\n<div class=\"plots\">\n");
    for (m, means, rows) in plots {
        h.push_str(&format!(
            "<img src=\"{}\" alt=\"{m} means\"><img src=\"{}\" alt=\"{m} rows\">\n",
            escape(means),
            escape(rows)
        ));
    }
    h.push_str("</div>\n<h2>Gallery</h2>\n<p>Sort: <select id=\"sort\"><option value=\"index\">row</option>");
    for (j, m) in c.metrics.iter().enumerate() {
        h.push_str(&format!(
            "<option value=\"m{j}\">{m} (run 1, worst first)</option>\
             <option value=\"d{j}\">{m}: largest difference between runs</option>"
        ));
    }
    h.push_str("</select></p>\n<div id=\"gallery\">\n");
    for g in gallery {
        // data attributes: per metric, run 1's value and the spread across runs
        let mut attrs = format!("data-index=\"{}\"", g.index);
        for (j, m) in c.metrics.iter().enumerate() {
            let vals: Vec<f64> = g.runs.iter().filter_map(|r| r.1[j]).collect();
            let first = g.runs.first().and_then(|r| r.1[j]);
            let worst = first.map(|v| if m.higher_is_better() { v } else { -v });
            let spread = if vals.len() > 1 {
                let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                Some(hi - lo)
            } else {
                None
            };
            attrs.push_str(&format!(
                " data-m{j}=\"{}\" data-d{j}=\"{}\"",
                number(worst),
                number(spread)
            ));
        }
        h.push_str(&format!(
            "<div class=\"row\" {attrs}>\n<p><b>#{}</b> {}</p>\n<div class=\"imgs\">",
            g.index,
            escape(&g.prompt)
        ));
        for (k, i) in g.inputs.iter().enumerate() {
            h.push_str(&image_cell(i, &format!("input {}", k + 1)));
        }
        h.push_str(&image_cell(&g.gt, "ground truth"));
        for (r, (img, vals)) in g.runs.iter().enumerate() {
            let scores: Vec<String> = c
                .metrics
                .iter()
                .zip(vals)
                .filter_map(|(m, v)| v.map(|v| format!("{m} {v:.4}")))
                .collect();
            h.push_str(&image_cell(
                img,
                &format!("{}<br><small>{}</small>", names[r], scores.join(" · ")),
            ));
        }
        h.push_str("</div></div>\n");
    }
    h.push_str("</div>\n<script>\n");
    h.push_str(SCRIPT);
    h.push_str("</script>\n</body></html>\n");
    h
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;font-variant-numeric:tabular-nums}
td:first-child,th:first-child{text-align:left}
td.best{background:#d8f5d0;font-weight:bold}
.plots img{max-width:48%;margin:4px}
.row{border-top:1px solid #ddd;padding:8px 0}
.imgs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;max-width:260px}
figure img{max-width:256px;display:block}
figcaption{font-size:12px}
.gap{width:120px;height:60px;background:#eee}
.note{color:#a40}
";

const SCRIPT: &str = "document.getElementById('sort').addEventListener('change', function () {
  const key = this.value;
  const g = document.getElementById('gallery');
  const rows = Array.from(g.children);
  const val = (r) => {
    if (key === 'index') return Number(r.dataset.index);
    const v = r.dataset[key];
    return v === 'null' ? Infinity : (key[0] === 'd' ? -Number(v) : Number(v));
  };
  rows.sort((a, b) => val(a) - val(b));
  rows.forEach((r) => g.appendChild(r));
});
";
