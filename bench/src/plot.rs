//! PNG bar charts of the main tables (plotters, drawing text with the
//! DejaVu font Debian ships; without it the report simply has no plots).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::report::Table;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Makes the font available to plotters; false when it is not installed.
pub fn fonts() -> bool {
    let Ok(bytes) = std::fs::read(FONT) else {
        return false;
    };
    // plotters keeps the font for the life of the process.
    register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).is_ok()
}

/// One bar per row whose `filter` column matches: label from column 0,
/// height from `value` column.
pub fn bars(
    table: &Table,
    value: &str,
    filter: Option<(&str, &str)>,
    title: &str,
    file: &Path,
) -> anyhow::Result<bool> {
    let Some(index) = table.columns.iter().position(|c| c == value) else {
        return Ok(false);
    };
    let filter_index = filter.and_then(|(column, _)| table.columns.iter().position(|c| c == column));
    let bars: Vec<(String, f64)> = table
        .rows
        .iter()
        .filter(|row| match (filter, filter_index) {
            (Some((_, wanted)), Some(i)) => row[i] == wanted,
            _ => true,
        })
        .filter_map(|row| Some((row[0].clone(), row[index].trim_end_matches('%').parse::<f64>().ok()?)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    if bars.is_empty() {
        return Ok(false);
    }
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.15;
    let root = BitMapBackend::new(file, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((0..bars.len() - 1).into_segmented(), 0.0..top.max(1e-9))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(value)
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    let strait = RGBColor(0x1f, 0x6f, 0xb4);
    let other = RGBColor(0x99, 0x99, 0x99);
    chart.draw_series(
        Histogram::vertical(&chart)
            .margin(25)
            .style_func(|x, _| match x {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if labels[*i].starts_with("strait") => {
                    strait.filled()
                }
                _ => other.filled(),
            })
            .data(bars.iter().enumerate().map(|(i, (_, v))| (i, *v))),
    )?;
    root.present()?;
    Ok(true)
}
