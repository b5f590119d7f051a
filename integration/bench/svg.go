package main

import (
	"fmt"
	"math"
	"strings"
)

// kindColor gives each front end the same colour in both groups.
var kindColor = map[string]string{
	"zmq":           "#1f77b4",
	"reverse_proxy": "#ff7f0e",
	"respond":       "#2ca02c",
	"mongrel2":      "#9467bd",
	"direct":        "#7f7f7f",
	"zmq+control":   "#17becf",
	// The floor cases: lighter shades of their front end's colour.
	"zmq+floor":              "#aec7e8",
	"mongrel2+floor":         "#c5b0d5",
	"zmq+floor-handler":      "#c6dbef",
	"mongrel2+floor-handler": "#dadaeb",
	// The least Go front end, bridging and answering by itself.
	"frontfloor":         "#8c564b",
	"frontfloor-respond": "#c49c94",
}

// renderSVG draws the median req/s of every case as a bar, with a min..max
// whisker, grouped HTTP then HTTPS. Hand-written SVG 1.1, no dependencies.
func renderSVG(rep *Report) string {
	const (
		barW, barGap, groupGap   = 64.0, 18.0, 48.0
		left, right, top, bottom = 78.0, 24.0, 70.0, 80.0
		plotH                    = 300.0
	)
	var groups [][]CaseReport
	for _, g := range []string{"HTTP", "HTTPS"} {
		var cs []CaseReport
		for _, c := range rep.Cases {
			if c.Group == g {
				cs = append(cs, c)
			}
		}
		if len(cs) > 0 {
			groups = append(groups, cs)
		}
	}
	plotW := 0.0
	for i, g := range groups {
		if i > 0 {
			plotW += groupGap
		}
		plotW += float64(len(g))*(barW+barGap) + barGap
	}
	plotW = math.Max(plotW, 640) // room for the title
	width, height := left+plotW+right, top+plotH+bottom

	maxV := 0.0
	for _, c := range rep.Cases {
		maxV = math.Max(maxV, math.Max(c.RPSMax, c.RPSMedian))
	}
	step := niceStep(maxV / 5)
	yMax := step * math.Ceil(maxV/step)
	if yMax <= 0 {
		yMax, step = 1, 1
	}
	y := func(v float64) float64 { return top + plotH - v/yMax*plotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#fff"/>`+"\n")
	m, p := rep.Machine, rep.Params
	fmt.Fprintf(&b, `<text x="%.0f" y="24" font-size="16" font-weight="bold">Requests/s, %s: median of %d round(s), whiskers min..max</text>`+"\n", left, esc(p.Workload), p.Rounds)
	fmt.Fprintf(&b, `<text x="%.0f" y="44" fill="#555">%s</text>`+"\n", left,
		esc(fmt.Sprintf("wrk -t%d -c%d -d%gs · %d CPUs %s · %s · %s", p.Threads, p.Conns, p.DurationS, m.CPUs, m.CPUModel, m.GoVersion, m.Commit)))

	noisy := 0.0
	for _, c := range rep.Cases {
		noisy = max(noisy, c.OtherCPU)
	}
	if noisy > noisyPercent {
		fmt.Fprintf(&b, `<text x="%.0f" y="60" fill="#d62728">busy machine: other processes used up to %.0f%% of the CPU during measurements</text>`+"\n", left, noisy)
	}

	// Grid and y axis labels.
	for v := 0.0; v <= yMax+step/2; v += step {
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, left+plotW, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n", left-8, y(v)+4, kilo(v))
	}
	fmt.Fprintf(&b, `<text transform="translate(18 %.0f) rotate(-90)" text-anchor="middle" fill="#555">requests/s</text>`+"\n", top+plotH/2)

	x := left + barGap
	for gi, g := range groups {
		if gi > 0 {
			x += groupGap
		}
		gx := x
		for _, c := range g {
			cx := x + barW/2
			color := kindColor[c.Kind]
			if color == "" {
				color = "#444"
			}
			if c.OK > 0 {
				stroke := ""
				if c.Flagged {
					stroke = ` stroke="#d62728" stroke-width="3"`
				}
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.0f" height="%.1f" fill="%s"%s><title>%s: %.0f req/s (min %.0f, max %.0f), p50 %s, p99 %s</title></rect>`+"\n",
					x, y(c.RPSMedian), barW, y(0)-y(c.RPSMedian), color, stroke, esc(c.Name), c.RPSMedian, c.RPSMin, c.RPSMax, esc(fmtMicros(c.P50US)), esc(fmtMicros(c.P99US)))
				if c.RPSMax > c.RPSMin {
					fmt.Fprintf(&b, `<path d="M%.1f %.1fV%.1fM%.1f %.1fh12M%.1f %.1fh12" stroke="#222" fill="none"/>`+"\n",
						cx, y(c.RPSMin), y(c.RPSMax), cx-6, y(c.RPSMin), cx-6, y(c.RPSMax))
				}
				label := kilo(c.RPSMedian)
				if c.Flagged {
					label += " !"
				}
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold">%s</text>`+"\n",
					cx, math.Min(y(c.RPSMax), y(c.RPSMedian))-6, esc(label))
			} else {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#d62728">failed</text>`+"\n", cx, y(0)-6)
			}
			name := strings.TrimPrefix(c.Name, "https/")
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", cx, y(0)+18, esc(name))
			if c.OK > 0 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10" fill="#555">p99 %s</text>`+"\n", cx, y(0)+32, esc(fmtMicros(c.P99US)))
			}
			x += barW + barGap
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#888"/>`+"\n", gx, x-barGap, y(0)+44, y(0)+44)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold">%s</text>`+"\n", (gx+x-barGap)/2, y(0)+62, g[0].Group)
	}
	fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#222"/>`+"\n", left, left+plotW, y(0), y(0))
	b.WriteString("</svg>\n")
	return b.String()
}

// niceStep rounds a raw grid step up to 1, 2, 2.5 or 5 times a power of 10.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// kilo prints 48000 as "48k" and 31500 as "31.5k".
func kilo(v float64) string {
	if v < 1000 {
		return fmt.Sprintf("%.0f", v)
	}
	s := fmt.Sprintf("%.1f", v/1000)
	return strings.TrimSuffix(s, ".0") + "k"
}

var esc = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace
