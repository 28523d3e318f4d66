"""The evaluation report: one self-contained HTML page (`--report FILE.html` of python -m hrnetseg.evaluate,
HRNet_postprocess.py and scripts/eval_acc_perf.sh) with the figures of a result dict (as result.json holds it).

The page holds the summary (mIoU, pixel and mean accuracy, images), the per-class IoU as horizontal bars, the
row-normalised confusion matrix as a heat map with the class names on both axes, the N worst images (photo, ground
truth, prediction and error map side by side, as PNG data URIs downscaled to worst_images.PICTURE_WIDTH) and, from
eval_acc_perf.sh, its table of throughput and mIoU per batch size. Everything is inline (CSS, SVG, a small script,
the pictures): it opens from a disk, a mail or a CI artefact store without any network, and makes no request of its
own. The script only adds what a static page cannot (hover read-out, sorting the bars) and marks <body
data-report-ready="..."> when it has run, which the browser test reads.

The worst images are found while the scorer runs (worst_images.py: a bounded list, so a run holds only N
images' small pictures).

Atlas-side module: numpy and OpenCV only, valid Python 3.7.
"""
from __future__ import annotations

import base64
import html
from typing import Mapping, Optional, Sequence, Tuple

from hrnetseg.data import cityscapes
from hrnetseg.evaluation.worst_images import (
    DEFAULT_WORST,
    IGNORED_BGR,
    PICTURE_NAMES,
    RANKED_BY,
    RIGHT_BGR,
    WORST_KEY,
    WRONG_BGR,
    Worst,
    WorstImages,
)
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import write_text_atomic
from hrnetseg.util.structured import require_keys, require_list_of

# Each worst image adds four small PNGs (tens of kB): a hundred keeps the page a few MB, enough to look through.
MAX_WORST = 100

BAR_COLOUR = "#3b73b9"         # the IoU bars (the browser test looks for it)
# the heat map's scale (ColorBrewer's OrRd): white at 0% of a row, dark red at 100%
HEAT_STOPS = ((0.0, (255, 247, 236)), (0.25, (253, 212, 158)), (0.5, (252, 141, 89)), (0.75, (215, 48, 31)),
              (1.0, (127, 0, 0)))
NO_PIXELS_COLOUR = "#e9ecef"   # a heat map row whose class is not in the ground truth


# --- the result dict, checked -------------------------------------------------------------------------------

def check_result(result: Mapping, what: str, path: str) -> Mapping:
    """A result dict (result.json) the page can be drawn from: its keys, a square confusion matrix of counts with
    one row per class, fractions from 0 to 1; a one-line UserError naming the file otherwise."""
    require_keys(result, {"per_class": dict, "confusion_matrix": list, "images": int},
                 what, path, optional={"mIoU": (float, type(None)), "pixel_accuracy": (float, type(None)),
                                       "mean_accuracy": (float, type(None)), "skipped": list, WORST_KEY: list})
    classes = len(result["per_class"])
    matrix = result["confusion_matrix"]
    if not classes or len(matrix) != classes or not all(
            isinstance(row, list) and len(row) == classes for row in matrix):
        raise UserError("{} {}: the confusion matrix is not {} x {} (one row and column per class)".format(
            what, path, classes, classes))
    for row in matrix:
        require_list_of(row, int, what, path, "confusion_matrix")
        if any(value < 0 for value in row):
            raise UserError("{} {}: the confusion matrix holds a negative count".format(what, path))
    fractions = [("per_class", value) for value in result["per_class"].values()]
    fractions += [(key, result.get(key)) for key in ("mIoU", "pixel_accuracy", "mean_accuracy")]
    for key, value in fractions:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                                  not 0 <= value <= 1):
            raise UserError("{} {}: {!r} holds {!r}, not a fraction from 0 to 1 or null".format(what, path, key, value))
    for entry in result.get(WORST_KEY, []):
        if not isinstance(entry, dict):
            raise UserError("{} {}: {!r} holds {!r}, not an object".format(what, path, WORST_KEY, entry))
        require_keys(entry, {"id": str, "mIoU": float}, what, path, optional={"pixel_accuracy": (float, type(None))})
    return result


# --- the page -------------------------------------------------------------------------------------------------

def _text(value) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else "{:.{d}f}%".format(100.0 * value, d=digits)


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(round(v)) for v in rgb))


def heat_colour(fraction: float) -> str:
    """The heat map's colour for a share of a row (0..1), interpolated between HEAT_STOPS."""
    fraction = min(1.0, max(0.0, fraction))
    for (low, low_rgb), (high, high_rgb) in zip(HEAT_STOPS, HEAT_STOPS[1:]):
        if fraction <= high:
            t = (fraction - low) / (high - low)
            return _hex([a + (b - a) * t for a, b in zip(low_rgb, high_rgb)])
    return _hex(HEAT_STOPS[-1][1])  # pragma: no cover - the loop ends at 1.0


def _class_colour(index: int, name: str) -> str:
    """The Cityscapes palette colour of a class (by its trainId), grey for a class list of another data set."""
    if name in cityscapes.CLASS_NAMES:
        return _hex(cityscapes.TRAIN_PALETTE[cityscapes.CLASS_NAMES.index(name)])
    return "#999999"


BAR = {"row": 22, "top": 24, "name_x": 18, "bar_x": 122, "bar_w": 250, "width": 440}


def iou_bars(per_class: Mapping[str, Optional[float]], miou: Optional[float]) -> str:
    """The per-class IoU as horizontal bars (inline SVG): swatch, name, bar, value; a dashed line at the mIoU."""
    b = BAR
    height = b["top"] + b["row"] * len(per_class) + 6
    parts = ['<svg id="iou-bars" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             'aria-label="IoU per class">'.format(w=b["width"], h=height)]
    for tick in (0, 25, 50, 75, 100):
        x = b["bar_x"] + b["bar_w"] * tick / 100.0
        parts.append('<line class="grid" x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y2}"/><text class="tick" x="{x:.1f}" '
                     'y="14" text-anchor="middle">{t}%</text>'.format(x=x, y1=b["top"] - 4, y2=height - 4, t=tick))
    if miou is not None:
        x = b["bar_x"] + b["bar_w"] * miou
        parts.append('<line class="miou" x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y2}"><title>mIoU {m}</title></line>'
                     .format(x=x, y1=b["top"] - 4, y2=height - 4, m=_percent(miou)))
    for index, (name, value) in enumerate(per_class.items()):
        y = b["top"] + b["row"] * index
        tip = "{}: IoU {}".format(name, _percent(value)) if value is not None else \
            "{}: not in the ground truth nor the prediction".format(name)
        parts.append('<g class="bar-row" data-order="{i}" data-iou="{v}" transform="translate(0,{y})"><title>{tip}'
                     '</title>'.format(i=index, v=-1 if value is None else "{:.6f}".format(value), y=y,
                                       tip=_text(tip)))
        parts.append('<rect x="0" y="6" width="11" height="11" rx="2" fill="{}"/>'.format(_class_colour(index, name)))
        parts.append('<text class="name" x="{}" y="15">{}</text>'.format(b["name_x"], _text(name)))
        if value is None:
            parts.append('<text class="value muted" x="{}" y="15">n/a</text>'.format(b["bar_x"] + 4))
        else:
            width = b["bar_w"] * value
            parts.append('<rect class="bar" x="{x}" y="4" width="{w:.1f}" height="14" rx="2" fill="{c}"/>'.format(
                x=b["bar_x"], w=width, c=BAR_COLOUR))
            parts.append('<text class="value" x="{:.1f}" y="15">{:.1f}</text>'.format(
                b["bar_x"] + width + 5, 100.0 * value))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


SECTION_EXTRA = 38   # a section's padding and border around its chart (STYLE)
HEAT = {"cell": 22, "left": 104, "top": 84, "right": 64, "legend": 46}


def heat_map_width(classes: int) -> int:
    return HEAT["left"] + HEAT["cell"] * classes + HEAT["right"]


def confusion_heat_map(names: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """The confusion matrix, each row divided by its sum (the share of a class's pixels given each label), as an
    inline SVG heat map: ground truth down the left, prediction along the top, the percentage in each cell."""
    h = HEAT
    n = len(names)
    grid = h["cell"] * n
    width, height = heat_map_width(n), h["top"] + grid + h["legend"]
    parts = ['<svg id="heatmap" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             'aria-label="confusion matrix, rows normalised">'.format(w=width, h=height),
             '<defs><linearGradient id="heat-scale">{}</linearGradient></defs>'.format("".join(
                 '<stop offset="{:.0f}%" stop-color="{}"/>'.format(100 * at, _hex(rgb)) for at, rgb in HEAT_STOPS))]
    for index, name in enumerate(names):
        centre = h["left"] + h["cell"] * index + h["cell"] / 2.0
        parts.append('<text class="axis" transform="translate({x:.1f},{y}) rotate(-50)">{n}</text>'.format(
            x=centre + 3, y=h["top"] - 6, n=_text(name)))
        parts.append('<text class="axis" x="{x}" y="{y:.1f}" text-anchor="end">{n}</text>'.format(
            x=h["left"] - 6, y=h["top"] + h["cell"] * index + h["cell"] / 2.0 + 4, n=_text(name)))
    for row, (name, counts) in enumerate(zip(names, matrix)):
        total = float(sum(counts))
        for column, count in enumerate(counts):
            x, y = h["left"] + h["cell"] * column, h["top"] + h["cell"] * row
            if total <= 0:
                fill, share = NO_PIXELS_COLOUR, None
                tip = "{}: no pixels of this class in the ground truth".format(name)
            else:
                share = count / total
                fill = heat_colour(share) if count else "#ffffff"   # nothing at all stands apart from a little
                tip = "ground truth {} predicted as {}: {} of its pixels ({:,} pixels)".format(
                    name, names[column], _percent(share), count)
            parts.append('<rect class="cell{d}" x="{x}" y="{y}" width="{c}" height="{c}" fill="{f}"><title>{t}</title>'
                         '</rect>'.format(d=" diagonal" if row == column else "", x=x, y=y, c=h["cell"], f=fill,
                                          t=_text(tip)))
            if share is not None and share >= 0.005:
                parts.append('<text class="cell-value{l}" x="{x:.1f}" y="{y:.1f}" text-anchor="middle">{v:.0f}</text>'
                             .format(l=" light" if share > 0.55 else "", x=x + h["cell"] / 2.0,
                                     y=y + h["cell"] / 2.0 + 3.5, v=100 * share))
    parts.append('<rect class="frame" x="{x}" y="{y}" width="{g}" height="{g}"/>'.format(x=h["left"], y=h["top"],
                                                                                      g=grid))
    legend_y = h["top"] + grid + 14
    parts.append('<rect x="{x}" y="{y}" width="{w}" height="10" fill="url(#heat-scale)" class="legend"/>'.format(
        x=h["left"], y=legend_y, w=grid))
    for at in (0, 50, 100):
        parts.append('<text class="tick" x="{x:.1f}" y="{y}" text-anchor="middle">{a}%</text>'.format(
            x=h["left"] + grid * at / 100.0, y=legend_y + 24, a=at))
    parts.append("</svg>")
    return "".join(parts)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def worst_images_section(entries: Sequence[Worst], limit: int, scored: int, note: Optional[str] = None) -> str:
    parts = ['<section id="worst"><h2>The {} worst images</h2>'.format(len(entries) if entries else limit),
             '<p class="caption">The images of {} among the {} scored. Error map: <span class="key" '
             'style="background:{w}"></span> wrong class, <span class="key" style="background:{r}"></span> right '
             '(the photo, dimmed), <span class="key" style="background:{i}"></span> not evaluated (ignore label).'
             '</p>'.format(_text(RANKED_BY), scored, w=_hex(WRONG_BGR[::-1]), r=_hex(RIGHT_BGR[::-1]),
                           i=_hex(IGNORED_BGR[::-1]))]
    if note:
        parts.append('<p class="note">{}</p>'.format(_text(note)))
    if entries:
        parts.append('<div class="palette">{}</div>'.format("".join(
            '<span><i style="background:{}"></i>{}</span>'.format(_class_colour(i, name), _text(name))
            for i, name in enumerate(cityscapes.CLASS_NAMES))))
    for rank, entry in enumerate(entries, 1):
        parts.append('<div class="case"><div class="case-head"><span class="rank">{r}</span><code>{i}</code>'
                     '<span class="scores">mIoU {m} &middot; pixel accuracy {a}</span></div><div class="strip">'
                     .format(r=rank, i=_text(entry.id), m=_percent(entry.miou, 1),
                             a=_percent(entry.pixel_accuracy, 1)))
        for name in PICTURE_NAMES:
            png = entry.pictures.get(name)
            body = '<img alt="{n}" src="{s}">'.format(n=_text(name), s=_data_uri(png)) if png else \
                '<div class="missing">no {}</div>'.format("photo beside the label" if name == "image" else name)
            parts.append('<figure class="{c}">{b}<figcaption>{n}</figcaption></figure>'.format(
                c="photo" if name == "image" else "labels", b=body, n=_text(name)))
        parts.append("</div></div>")
    parts.append("</section>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join("<th>{}</th>".format(_text(h)) for h in headers)
    body = "".join("<tr>{}</tr>".format("".join("<td>{}</td>".format(_text(cell)) for cell in row)) for row in rows)
    return '<table class="figures"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>'.format(head, body)


STYLE = """
:root{--ink:#1f2933;--muted:#66717d;--line:#dde2e8;--panel:#fff;--page:#f3f5f8}
*{box-sizing:border-box}
body{margin:0;background:var(--page);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1160px;margin:0 auto;padding:22px 18px 40px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:16px;margin:0 0 8px}
.sub,.caption,.note,footer{color:var(--muted)}.caption{margin:0 0 10px;font-size:13px}
.note{background:#fff8e1;border:1px solid #f0dca0;border-radius:6px;padding:6px 10px}
dl.details{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0 0;font-size:13px}
dl.details dt{color:var(--muted)}dl.details dd{margin:0;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:160px}
.card .k{color:var(--muted);font-size:13px}
.card .v{font-size:26px;font-weight:600}
section{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:14px 0}
.pair{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.pair>section{margin:0}
svg.chart{display:block;font-size:12px}svg text{fill:var(--ink)}
svg .tick{fill:var(--muted);font-size:10px}svg .grid{stroke:#e8ebef}svg .muted{fill:var(--muted)}
svg .value{font-size:11px}svg .miou{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:4 3}
svg .axis{font-size:11px}svg .cell-value{font-size:9px;fill:#4a3020}svg .cell-value.light{fill:#fff}
svg .frame{fill:none;stroke:#b8c0ca}svg .legend{stroke:#b8c0ca}svg .cell:hover{stroke:#111;stroke-width:1.5}
.toolbar{margin:0 0 6px;font-size:12px}.toolbar button{font:inherit;border:1px solid var(--line);background:#f7f9fb;
border-radius:5px;padding:2px 8px;cursor:pointer}.toolbar button[aria-pressed=true]{background:#dce8f7;
border-color:#9dbbe3}
#cell-readout{min-height:1.5em;margin:6px 0 0;font-size:12px;color:var(--muted)}
table.figures{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.figures th,table.figures td{border-bottom:1px solid var(--line);padding:5px 14px;text-align:right}
table.figures th:nth-child(-n+3),table.figures td:nth-child(-n+3){text-align:left}
.palette{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:11px;color:var(--muted);margin:0 0 10px}
.palette i,.key{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.case{border-top:1px solid var(--line);padding:10px 0 4px}
.case-head{display:flex;gap:10px;align-items:baseline;margin-bottom:6px}
.rank{background:var(--ink);color:#fff;border-radius:10px;padding:0 8px;font-size:12px}
.scores{color:var(--muted);font-size:13px}
.strip{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:256px}figure img,.missing{display:block;width:256px;border-radius:3px;background:#eef0f3}
figure.labels img{image-rendering:pixelated}
.missing{height:128px;display:flex;align-items:center;justify-content:center;color:var(--muted);font-size:12px}
figcaption{font-size:12px;color:var(--muted);margin-top:2px}
footer{font-size:12px;margin-top:18px}
"""

# Adds what a static page cannot: the heat map cell under the pointer spelt out, the bars sorted by IoU. Marks
# <body data-report-ready> with what it found (the browser test reads it; an error lands there too) and
# <body data-layout> with where the charts are.
SCRIPT = """
(function () {
  var body = document.body;
  try {
    var bars = document.querySelectorAll("#iou-bars .bar-row");
    var cells = document.querySelectorAll("#heatmap rect.cell");
    var readout = document.getElementById("cell-readout");
    var heat = document.getElementById("heatmap");
    if (heat && readout) {
      heat.addEventListener("mouseover", function (event) {
        var title = event.target.querySelector ? event.target.querySelector("title") : null;
        if (title) { readout.textContent = title.textContent; }
      });
    }
    var rowHeight = ROW_HEIGHT, top = TOP;
    function place(byIou) {
      var rows = Array.prototype.slice.call(bars);
      rows.sort(function (a, b) {
        if (byIou) {
          var d = parseFloat(b.getAttribute("data-iou")) - parseFloat(a.getAttribute("data-iou"));
          if (d !== 0) { return d; }
        }
        return parseInt(a.getAttribute("data-order"), 10) - parseInt(b.getAttribute("data-order"), 10);
      });
      rows.forEach(function (row, i) { row.setAttribute("transform", "translate(0," + (top + rowHeight * i) + ")"); });
      document.querySelectorAll(".toolbar button").forEach(function (button) {
        button.setAttribute("aria-pressed", String((button.getAttribute("data-sort") === "iou") === byIou));
      });
    }
    document.querySelectorAll(".toolbar button").forEach(function (button) {
      button.addEventListener("click", function () { place(button.getAttribute("data-sort") === "iou"); });
    });
    // where the charts are (page pixels: left, top, width, height), for the browser test's look at its screenshot
    var box = function (id) {
      var element = document.getElementById(id);
      if (!element) { return null; }
      var r = element.getBoundingClientRect();
      return [Math.round(r.left + window.scrollX), Math.round(r.top + window.scrollY), Math.round(r.width),
              Math.round(r.height)];
    };
    body.setAttribute("data-layout", JSON.stringify({bars: box("iou-bars"), heatmap: box("heatmap"),
                                                     worst: box("worst")}));
    body.setAttribute("data-report-ready", "ok: " + bars.length + " bars, " + cells.length + " cells, " +
                      document.querySelectorAll("#worst img").length + " pictures");
  } catch (error) {
    body.setAttribute("data-report-ready", "error: " + error);
    throw error;
  }
})();
""".replace("ROW_HEIGHT", str(BAR["row"])).replace("TOP", str(BAR["top"]))


def render(result: Mapping, title: str = "Segmentation report", details: Sequence[Tuple[str, str]] = (),
           worst: Optional[Sequence[Worst]] = None, worst_limit: int = DEFAULT_WORST, scored: Optional[int] = None,
           worst_note: Optional[str] = None, table: Optional[Tuple[Sequence[str], Sequence[Sequence[str]]]] = None,
           table_note: Optional[str] = None) -> str:
    """The page for a result dict (as result.json holds it).

    details: (what, value) lines under the title (the tool, the model, the data). worst: the worst images (None:
    no such section; an empty list with worst_note: the section says why there are none). table: (headers, rows)
    of eval_acc_perf.sh's figures per batch size, as text.
    """
    per_class = result["per_class"]
    names = list(per_class)
    cards = [("mIoU", _percent(result.get("mIoU"))), ("pixel accuracy", _percent(result.get("pixel_accuracy"))),
             ("mean accuracy", _percent(result.get("mean_accuracy"))), ("images", str(result["images"]))]
    skipped = result.get("skipped") or []
    if skipped:
        cards.append(("skipped", str(len(skipped))))
    absent = [name for name, value in per_class.items() if value is None]
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width,initial-scale=1">',
             "<title>{}</title><style>{}</style></head>".format(_text(title), STYLE),
             '<body data-report-ready="no"><main><header><h1>{}</h1>'.format(_text(title))]
    if details:
        parts.append('<dl class="details">{}</dl>'.format("".join(
            "<dt>{}</dt><dd>{}</dd>".format(_text(k), _text(v)) for k, v in details)))
    parts.append('</header><div class="cards">{}</div>'.format("".join(
        '<div class="card"><div class="k">{}</div><div class="v">{}</div></div>'.format(_text(k), _text(v))
        for k, v in cards)))
    if table is not None:
        parts.append('<section id="table"><h2>Throughput and mIoU per batch size</h2>{}{}</section>'.format(
            _table(*table), '<p class="caption">{}</p>'.format(_text(table_note)) if table_note else ""))
    # each chart's section as wide as its chart (plus padding and border), so a long caption wraps instead of
    # pushing the heat map under the bars
    absent_note = "; {} absent: {}".format(len(absent), ", ".join(absent)) if absent else ""
    parts.append('<div class="pair"><section id="classes" style="width:{}px"><h2>IoU per class</h2>'
                 '<p class="caption">The dashed line is the mIoU (the mean over the classes present{}).</p>'
                 '<div class="toolbar">Order: <button type="button" data-sort="class" aria-pressed="true">classes'
                 '</button> <button type="button" data-sort="iou" aria-pressed="false">IoU</button></div>{}'
                 '</section>'.format(BAR["width"] + SECTION_EXTRA, _text(absent_note),
                                     iou_bars(per_class, result.get("mIoU"))))
    parts.append('<section id="confusion" style="width:{}px"><h2>Confusion matrix</h2><p class="caption">Rows: '
                 'ground truth, columns: prediction; each row shows where a class\'s pixels went (percent of the '
                 'row).</p>{}<p id="cell-readout"></p></section></div>'.format(
                     heat_map_width(len(names)) + SECTION_EXTRA, confusion_heat_map(names, result["confusion_matrix"])))
    if worst is not None or worst_note:
        parts.append(worst_images_section(worst or [], worst_limit, result["images"] if scored is None else scored,
                                          worst_note))
    parts.append('<footer>Written by hrnetseg. One self-contained file: the figures are those of the result JSON '
                 '(confusion_matrix, per_class{}).</footer></main>'.format(", " + WORST_KEY if worst else ""))
    parts.append("<script>{}</script></body></html>\n".format(SCRIPT))
    return "".join(parts)


def run_page(result: Mapping, title: str, details: Sequence[Tuple[str, str]], worst: Optional[WorstImages],
             worst_note: Optional[str] = None, **table) -> str:
    """render() for a run that collected `worst` (None: none collected, worst_note says why, if anything); a list of
    0 images has no section."""
    if worst is None:
        return render(result, title, details, None, worst_note=worst_note, **table)
    return render(result, title, details, worst.entries() if worst.limit else None, worst.limit, worst.scored,
                  worst_note, **table)


def write_report(path: str, page: str) -> None:
    """The page at `path`, written atomically (a reader never sees half of it)."""
    write_text_atomic(path, page)


# --- the flags ----------------------------------------------------------------------------------------------

def worst_count(text: str) -> int:
    """--report_worst: a whole number from 0 to MAX_WORST."""
    from hrnetseg.util.cli import whole_number

    return whole_number(text, 0, MAX_WORST)


def add_report_flags(parser) -> None:
    parser.add_argument("--report", default=None, metavar="FILE.html",
                        help="write a self-contained HTML report: per-class IoU bars, the confusion matrix as a heat "
                             "map, the worst images")
    parser.add_argument("--report_worst", type=worst_count, default=None, metavar="N",
                        help="how many of the worst images (lowest per-image mIoU) the report shows, 0 to {} "
                             "(default {}); their ids and scores also go into --save_path's JSON as {!r}, with or "
                             "without --report".format(MAX_WORST, DEFAULT_WORST, WORST_KEY))


def worst_collector(report: Optional[str], report_worst: Optional[int], shared: bool = False) -> Optional[WorstImages]:
    """The collector the flags ask for: None when neither --report nor --report_worst is given."""
    if report is None and report_worst is None:
        return None
    return WorstImages(DEFAULT_WORST if report_worst is None else report_worst, shared=shared)
