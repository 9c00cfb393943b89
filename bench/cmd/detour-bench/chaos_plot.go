package main

// One SVG per chaos scenario (gonum.org/v1/plot): a panel per mode, the
// share of requests each provider endpoint answered and the share that
// failed, in bins of chaosBin, with the fault's spans shaded.

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// chaosPlotted are the endpoints drawn (long and vision take no "auto"
// traffic), with their colours.
var chaosPlotted = []struct {
	Sim   string
	Color color.Color
}{
	{"fast-east", color.RGBA{31, 119, 180, 255}},
	{"fast-west", color.RGBA{120, 180, 230, 255}},
	{"fastb-east", color.RGBA{44, 160, 44, 255}},
	{"fastb-west", color.RGBA{150, 220, 130, 255}},
}

var (
	chaosFailedColor = color.RGBA{214, 39, 40, 255}
	chaosFaultColor  = color.RGBA{235, 235, 235, 255}
)

// writeChaosPlot draws sr's runs into path: SVG, or PNG when path ends in
// .png.
func writeChaosPlot(path string, sr chaosScenarioResult) error {
	var rows [][]*plot.Plot
	for _, mode := range chaosModes {
		r := sr.Runs[mode]
		if r == nil {
			continue
		}
		p, err := chaosPanel(sr.Scenario, r)
		if err != nil {
			return err
		}
		rows = append(rows, []*plot.Plot{p})
	}
	if len(rows) == 0 {
		return fmt.Errorf("no run to plot")
	}
	w, h := vg.Points(760), vg.Points(float64(300*len(rows)))
	var img interface {
		vg.CanvasSizer
		io.WriterTo
	}
	if strings.HasSuffix(path, ".png") {
		img = vgimg.PngCanvas{Canvas: vgimg.New(w, h)}
	} else {
		img = vgsvg.New(w, h)
	}
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(rows), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6),
		PadLeft: vg.Points(6), PadRight: vg.Points(6), PadY: vg.Points(18)}
	canvases := plot.Align(rows, tiles, dc)
	for i := range rows {
		rows[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := img.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func chaosPanel(sc chaosScenario, r *chaosRun) (*plot.Plot, error) {
	p := plot.New()
	label := "detour (controller, shipped defaults)"
	if r.Mode == modeBaseline {
		label = "baseline (plain Envoy, its defaults)"
	}
	p.Title.Text = fmt.Sprintf("%s: %s", sc.Name, label)
	p.X.Label.Text = "seconds from the start of the load"
	p.Y.Label.Text = "share of requests"
	p.Y.Min, p.Y.Max = 0, 1.05
	p.X.Min, p.X.Max = 0, r.End.Seconds()
	p.Legend.Top = true
	p.Legend.Left = false
	p.Add(plotter.NewGrid())
	for i, w := range r.Windows {
		poly, err := plotter.NewPolygon(plotter.XYs{{X: w[0].Seconds(), Y: 0}, {X: w[1].Seconds(), Y: 0},
			{X: w[1].Seconds(), Y: 1.05}, {X: w[0].Seconds(), Y: 1.05}})
		if err != nil {
			return nil, err
		}
		poly.Color = chaosFaultColor
		poly.LineStyle.Width = 0
		p.Add(poly)
		if i == 0 {
			p.Legend.Add("fault", poly)
		}
	}
	s := chaosSeriesOf(r)
	line := func(ys []float64, c color.Color, width float64, dashed bool) (*plotter.Line, error) {
		xys := make(plotter.XYs, len(ys))
		for i, y := range ys {
			xys[i] = plotter.XY{X: (s.At[i] + chaosBin/2).Seconds(), Y: y}
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		l.Color, l.Width = c, vg.Points(width)
		if dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		}
		return l, nil
	}
	for _, e := range chaosPlotted {
		l, err := line(s.Share[e.Sim], e.Color, 1.5, false)
		if err != nil {
			return nil, err
		}
		p.Add(l)
		p.Legend.Add(e.Sim, l)
	}
	l, err := line(s.Failed, chaosFailedColor, 2, true)
	if err != nil {
		return nil, err
	}
	p.Add(l)
	p.Legend.Add("failed", l)
	return p, nil
}
