//! The page frame: escaping, the layout every page shares, its stylesheet and the one small
//! script that keeps a page live. Everything is inline: the binary serves a page with no other
//! request than its live stream, and a page without JavaScript still shows the state it was
//! rendered with.

use std::fmt::Write as _;

/// Text as HTML (element content and attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A job id in a URL path segment (ids are `name-date-time[-k]`, but names are the user's).
pub fn url_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = r#"
:root{--fg:#1b1f24;--muted:#5b6570;--line:#d8dee4;--bg:#fff;--panel:#f6f8fa;--ok:#1a7f37;--bad:#cf222e;--run:#0969da;--warn:#9a6700}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;gap:18px;align-items:baseline;padding:10px 20px;border-bottom:1px solid var(--line);background:var(--panel)}
header a{color:var(--fg);text-decoration:none;font-weight:600}
header .where{color:var(--muted);font-size:12px;margin-left:auto}
main{padding:14px 20px;max-width:1280px}
h1{font-size:20px;margin:4px 0 10px}
h2{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;margin:4px 0 10px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:12px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;border:1px solid currentColor}
.s-succeeded,.s-done,.s-idle{color:var(--ok)}.s-failed,.s-dead,.s-cancelled{color:var(--bad)}
.s-running,.s-busy{color:var(--run)}.s-pending,.s-waiting,.s-stopped{color:var(--muted)}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px;background:var(--bg)}
.kv{display:flex;flex-wrap:wrap;gap:6px 22px;margin:6px 0}
.kv div span{color:var(--muted);margin-right:6px}
.straggler{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;margin:8px 0}
tr.slow td{background:#fff8c5}
.muted{color:var(--muted)}
.log{font:12px/1.4 ui-monospace,"DejaVu Sans Mono",monospace;max-height:320px;overflow:auto;background:var(--panel);border:1px solid var(--line);padding:6px 8px;white-space:pre-wrap}
svg.chart{width:100%;height:auto;max-height:300px}
svg .plot{fill:#fff;stroke:#c9d1d9}svg .grid{stroke:#eaeef2}svg .tick{font-size:10px;fill:#57606a}
svg .axis{font-size:11px;fill:#24292f}svg .ct{font-size:12px;font-weight:600;fill:#24292f}
svg .marker{stroke:#9a6700;stroke-dasharray:4 3}svg .mlabel{font-size:10px;fill:#9a6700}
svg .legend{font-size:10px;fill:#24292f}svg .empty{font-size:12px;fill:#8c959f}
form.inline{display:inline}button{font:inherit;padding:2px 10px;border:1px solid var(--bad);color:var(--bad);background:#fff;border-radius:5px;cursor:pointer}
#live-state{font-size:12px}
form.submit textarea{width:100%;font:12px/1.4 ui-monospace,"DejaVu Sans Mono",monospace}
button.go{border-color:var(--run);color:var(--run)}
"#;

/// Connects the page to its live stream: each `update` event carries `{"sections":{id: html}}`
/// and replaces those sections' contents; `end` closes the stream (the job ended).
const SCRIPT: &str = r#"
(function(){
  var url=document.body.getAttribute('data-live'); if(!url||!window.EventSource) return;
  var state=document.getElementById('live-state');
  var es=new EventSource(url);
  es.addEventListener('update',function(e){
    var d=JSON.parse(e.data);
    Object.keys(d.sections).forEach(function(id){var el=document.getElementById(id); if(el) el.innerHTML=d.sections[id];});
    if(state) state.textContent='live';
  });
  es.addEventListener('end',function(){es.close(); if(state) state.textContent='ended';});
  es.onerror=function(){if(state) state.textContent='reconnecting…';};
})();
"#;

/// A whole page: `title`, the header's note on which replica serves it, `body`, and the live
/// stream's URL (none: a static page).
pub fn page(title: &str, served_by: &str, body: &str, live: Option<&str>) -> String {
    let live_attr = live.map(|u| format!(r#" data-live="{}""#, esc(u))).unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{title} · Cyclotron</title><style>{STYLE}</style></head><body{live_attr}><header><a href="/">Cyclotron</a><span class="muted">{title}</span><span class="where">{served_by} · <span id="live-state">{state}</span></span></header><main>{body}</main><script>{SCRIPT}</script></body></html>"#,
        title = esc(title),
        served_by = esc(served_by),
        state = if live.is_some() { "connecting…" } else { "static" },
    )
}

/// A status word as a coloured badge.
pub fn badge(status: &str) -> String {
    format!(r#"<span class="badge s-{0}">{0}</span>"#, esc(status))
}

/// `x` with `digits` decimals, `–` when not finite.
pub fn num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

/// A learning rate or loss in short scientific form when small.
pub fn sci(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x != 0.0 && x.abs() < 1e-2 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_ids_are_safe_in_urls() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(url_segment("mnist-20261203-101010"), "mnist-20261203-101010");
        assert_eq!(url_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn a_page_is_self_contained_and_live_only_when_asked() {
        let p = page("job <x>", "leader 127.0.0.1:1", "<p>hi</p>", Some("/jobs/x/live"));
        assert!(p.contains(r#"data-live="/jobs/x/live""#) && p.contains("job &lt;x&gt;"));
        assert!(!p.contains("http://") && !p.contains("https://"), "nothing from elsewhere");
        assert!(!page("t", "s", "", None).contains("<body data-live"));
        assert_eq!(num(f64::NAN, 2), "–");
        assert_eq!(sci(0.0003), "3.00e-4");
    }
}
