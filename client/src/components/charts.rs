//! Charts drawn as SVG: no chart library, nothing to load.

use dioxus::prelude::*;

/// One bar: label, value, and the text shown beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub text: String,
}

/// Bar lengths as shares of the largest (0 when all are 0).
pub fn shares(values: &[f64]) -> Vec<f64> {
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|v| {
            if max > 0.0 && v.is_finite() {
                (v / max).max(0.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// Horizontal bars with their labels, for counts by kind.
#[component]
pub fn BarChart(title: String, bars: Vec<Bar>) -> Element {
    const ROW: f64 = 28.0;
    // A narrow view box: the SVG scales up, and so does its text.
    const LABEL_W: f64 = 64.0;
    const BAR_W: f64 = 120.0;
    let height = (bars.len().max(1) as f64) * ROW;
    let lengths = shares(&bars.iter().map(|b| b.value).collect::<Vec<_>>());
    rsx! {
        figure { class: "chart",
            figcaption { "{title}" }
            if bars.is_empty() {
                p { class: "muted", "Nothing yet." }
            } else {
                svg {
                    "viewBox": "0 0 300 {height}",
                    role: "img",
                    "aria-label": "{title}",
                    for (i , (bar , share)) in bars.iter().zip(lengths).enumerate() {
                        g { key: "{bar.label}",
                            text {
                                x: "0",
                                y: "{i as f64 * ROW + 18.0}",
                                class: "chart-label",
                                "{bar.label}"
                            }
                            rect {
                                x: "{LABEL_W}",
                                y: "{i as f64 * ROW + 6.0}",
                                width: "{(share * BAR_W).max(1.0):.1}",
                                height: "16",
                                rx: "3",
                                class: "chart-bar",
                            }
                            text {
                                x: "{LABEL_W + share * BAR_W + 8.0:.1}",
                                y: "{i as f64 * ROW + 18.0}",
                                class: "chart-value",
                                "{bar.text}"
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Vertical columns over time (oldest left), for recent latencies.
#[component]
pub fn ColumnChart(title: String, values: Vec<f64>, unit: String) -> Element {
    const W: f64 = 300.0;
    const H: f64 = 90.0;
    let n = values.len().max(1) as f64;
    let step = W / n;
    let heights = shares(&values);
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    rsx! {
        figure { class: "chart",
            figcaption { "{title}" }
            if values.is_empty() {
                p { class: "muted", "Nothing yet." }
            } else {
                svg {
                    "viewBox": "0 0 {W} {H + 16.0}",
                    role: "img",
                    "aria-label": "{title}",
                    for (i , h) in heights.iter().enumerate() {
                        rect {
                            key: "{i}",
                            x: "{i as f64 * step + 1.0:.1}",
                            y: "{H - h * H:.1}",
                            width: "{(step - 2.0).max(1.0):.1}",
                            height: "{(h * H).max(1.0):.1}",
                            class: "chart-bar",
                        }
                    }
                    text { x: "0", y: "{H + 14.0}", class: "chart-value", "max {max:.1} {unit}" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_scale_to_the_largest() {
        assert_eq!(shares(&[1.0, 2.0, 4.0]), vec![0.25, 0.5, 1.0]);
        assert_eq!(shares(&[0.0, 0.0]), vec![0.0, 0.0]);
        assert_eq!(shares(&[]), Vec::<f64>::new());
        assert_eq!(shares(&[f64::NAN, 2.0]), vec![0.0, 1.0]);
    }

    #[test]
    fn bar_chart_draws_one_bar_per_value() {
        let bars = vec![
            Bar {
                label: "wav".into(),
                value: 3.0,
                text: "3 files".into(),
            },
            Bar {
                label: "flac".into(),
                value: 1.0,
                text: "1 file".into(),
            },
        ];
        let html = dioxus_ssr::render_element(rsx! { BarChart { title: "Formats", bars } });
        assert_eq!(html.matches("<rect").count(), 2, "{html}");
        assert!(html.contains(r#"width="120.0""#), "{html}");
        assert!(html.contains(r#"width="40.0""#), "{html}");
        assert!(html.contains("3 files") && html.contains("flac"), "{html}");
        let empty =
            dioxus_ssr::render_element(rsx! { BarChart { title: "Formats", bars: vec![] } });
        assert!(empty.contains("Nothing yet"), "{empty}");
    }

    #[test]
    fn column_chart_scales_heights() {
        let html = dioxus_ssr::render_element(rsx! {
            ColumnChart { title: "Latency", values: vec![10.0, 20.0], unit: "ms" }
        });
        assert_eq!(html.matches("<rect").count(), 2, "{html}");
        assert!(
            html.contains(r#"height="45.0""#) && html.contains(r#"height="90.0""#),
            "{html}"
        );
        assert!(html.contains("max 20.0 ms"), "{html}");
    }
}
