package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/testenv"
)

// browser is a headless Chromium (Debian's chromium package) driven with
// chromedp. On failure it saves a screenshot and the page's HTML in the
// test's artifact directory (see artifactDir).
type browser struct {
	t   *testing.T
	ctx context.Context
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	testenv.NeedTools(t, "chromium")
	path, _ := exec.LookPath("chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(1200, 1800), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: ctx}
	t.Cleanup(func() {
		if t.Failed() {
			b.saveArtifacts("failure")
		}
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

// artifactDir is where a failed browser test leaves its screenshot:
// $DROVER_TEST_ARTIFACTS/<test> when set (make test sets it to
// .artifacts in the repository), else the test's ArtifactDir (kept with
// go test -artifacts).
func artifactDir(t *testing.T) string {
	if dir := os.Getenv("DROVER_TEST_ARTIFACTS"); dir != "" {
		dir = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
		if err := os.MkdirAll(dir, 0o755); err == nil {
			return dir
		}
	}
	return t.ArtifactDir()
}

func (b *browser) saveArtifacts(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("no screenshot: %v", err)
		return
	}
	html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	dir := artifactDir(b.t)
	_ = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	_ = os.WriteFile(filepath.Join(dir, name+".html"), []byte(html), 0o644)
	b.t.Logf("screenshot and page (%s) in %s", name, dir)
}

// run runs browser actions with a generous bound (tests assert outcomes,
// not timings).
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](b *browser, what, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// waitText waits until the element's text contains want.
func (b *browser) waitText(sel, want string) {
	b.t.Helper()
	eventually(b.t, fmt.Sprintf("%s showing %q", sel, want), func() (bool, string) {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(s, want), s
	})
}

// confirm clicks a button that asks first, then the dialog's Confirm.
func (b *browser) confirm(what, sel string) {
	b.t.Helper()
	b.run(what, chromedp.Click(chromedp.CSS(sel)), chromedp.WaitVisible(chromedp.CSS("#confirm-ok")),
		chromedp.Click(chromedp.CSS("#confirm-ok")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
}

// a11yProblems lists what a basic accessibility check finds on the page:
// inputs without a label, buttons without an accessible name, no
// document language, a progress bar or meter without a label, and text
// whose contrast with its background is below WCAG AA (4.5:1, 3:1 for
// large text).
const a11yProblems = `(() => {
  const out = [];
  const lum = (c) => {
    const [r, g, b] = c.match(/[\d.]+/g).slice(0, 3).map((v) => {
      v = Number(v) / 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor, m = c.match(/[\d.]+/g);
      if (m && (m.length < 4 || Number(m[3]) > 0)) return c;
    }
    return "rgb(255, 255, 255)";
  };
  for (const e of document.querySelectorAll("body *")) {
    if (![...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const st = getComputedStyle(e);
    if (st.display === "none" || st.visibility === "hidden" || !e.getClientRects().length) continue;
    const a = lum(st.color), b = lum(background(e));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(st.fontSize), large = size >= 24 || (size >= 18.66 && Number(st.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) out.push(e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + " '" +
      e.textContent.trim().slice(0, 30) + "' has contrast " + ratio.toFixed(2));
  }
  if (!document.documentElement.lang) out.push("no lang on <html>");
  for (const e of document.querySelectorAll("input, select, textarea, progress, meter"))
    if (!(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.getAttribute("aria-labelledby"))
      out.push(e.tagName.toLowerCase() + "#" + e.id + " has no label");
  for (const b of document.querySelectorAll("button"))
    if (!(b.textContent.trim() || b.getAttribute("aria-label"))) out.push("button#" + b.id + " has no name");
  return out;
})()`

// writeVolume fills [0, n) with byte v through the control API.
func writeVolume(t *testing.T, c *volumeClient, n int, v byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for off := 0; off < n; off += 4 << 20 {
		if _, err := c.client.Write(ctx, &controlpb.WriteRequest{Offset: uint64(off), Data: bytes.Repeat([]byte{v}, min(4<<20, n-off))}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.client.Flush(ctx, &controlpb.Empty{}); err != nil {
		t.Fatal(err)
	}
}

// TestProcessConsoleBrowser drives drover dev's web console in headless
// Chromium (with DROVER_CONSOLE_SCREENSHOTS set it also saves the page
// during the rebuild and at the end, see artifactDir): the page passes a basic accessibility check; a snapshot is
// created from its form; a replica is removed, the volume written
// without it, and added back at a paced rate, and the rebuild progress
// bar is seen moving until the replica is RW again; the volume is
// detached (IO refused) and attached again; then the volume is
// reverted to the snapshot (the data is the snapshot's again) and the
// snapshot deleted; a backup taken, the volume written, and the backup
// restored over it (the data is the backup's again), all from the page.
func TestProcessConsoleBrowser(t *testing.T) {
	b := newBrowser(t)
	const size, changed = 16 << 20, 6 << 20
	dataDir, consoleAddr, backups := t.TempDir(), freeAddr(t), t.TempDir()
	c := newVolumeClient(t, freeAddr(t), size)
	start(t, "dev", nil, "dev", "--data-dir", dataDir, "--size", "16MiB", "--control", c.ctlAddr, "--frontend", "none",
		"--metrics-listen", "", "--console-listen", consoleAddr, "--backup-target", backups)
	c.waitModes("drover dev serving", "", "", "")
	writeVolume(t, c, changed, 0xa1)

	began := time.Now()
	b.run("open the console", chromedp.Navigate("http://"+consoleAddr+"/"), chromedp.WaitVisible(chromedp.CSS("#replica-dev-3")))
	b.waitText("#robustness", "healthy")
	if problems := eval[[]string](b, "accessibility check", a11yProblems); len(problems) > 0 {
		t.Errorf("accessibility: %s", strings.Join(problems, "; "))
	}

	b.run("create a snapshot with the keyboard", chromedp.Focus(chromedp.CSS("#snapshot-name")),
		chromedp.KeyEvent("before"+kb.Enter), chromedp.WaitVisible(chromedp.CSS("#snapshot-before")))
	if info, err := c.volumeInfo(); err != nil || !strings.Contains(strings.Join(info.GetChain(), ","), "before") {
		t.Fatalf("after the page created snapshot before, the chain is %v (%v)", info.GetChain(), err)
	}

	b.confirm("remove dev-3", "#remove-dev-3")
	b.run("dev-3 gone from the table", chromedp.WaitNotPresent(chromedp.CSS("#replica-dev-3")))
	writeVolume(t, c, changed, 0xb2) // dev-3 misses this: its rebuild copies it
	b.run("add dev-3 back at 2 MiB/s", chromedp.SendKeys(chromedp.CSS("#replica-address"), "dev-3"),
		chromedp.SetValue(chromedp.CSS("#replica-rate"), "2"),
		chromedp.Click(chromedp.CSS(`#add-replica button[type="submit"]`)))
	if os.Getenv("DROVER_CONSOLE_SCREENSHOTS") != "" {
		b.run("the rebuild showing", chromedp.WaitVisible(chromedp.CSS("#rebuild-progress")))
		b.saveArtifacts("rebuilding")
	}
	seen := watchRebuild(b)
	if len(seen) < 2 {
		t.Errorf("the rebuild progress bar showed %v (fractions done) while dev-3 was rebuilt; want it seen moving", seen)
	}
	b.waitText("#replica-dev-3", "RW")
	b.waitText("#robustness", "healthy")
	b.waitText("#event-rows", "rebuild done")

	b.confirm("detach", "#detach-btn")
	b.waitText("#attached", "detached")
	if _, err := c.client.Read(context.Background(), &controlpb.ReadRequest{Offset: 0, Length: 4096}); err == nil {
		t.Error("a read succeeded while the page had detached the volume")
	}
	b.run("attach", chromedp.Click(chromedp.CSS("#attach-btn")))
	b.waitText("#attached", "attached (hosts may do IO)")

	b.confirm("revert to before", "#revert-before")
	b.waitText("#message", "Revert to before: done.")
	rd, err := c.client.Read(context.Background(), &controlpb.ReadRequest{Offset: 0, Length: 4096})
	if err != nil || !bytes.Equal(rd.GetData(), bytes.Repeat([]byte{0xa1}, 4096)) {
		t.Fatalf("after the page reverted to snapshot before, block 0 is not what it held then (%v)", err)
	}
	b.confirm("delete snapshot before", "#delete-before")
	b.run("snapshot before gone", chromedp.WaitNotPresent(chromedp.CSS("#snapshot-before")))

	b.run("back up", chromedp.Click(chromedp.CSS("#backup-btn")))
	b.waitText("#backup-last", "Last backup dev/")
	b.waitText("#backup-last", "done at")
	b.run("the backup listed", chromedp.WaitVisible(chromedp.CSS("#backup-rows button")))
	writeVolume(t, c, 4096, 0xc3)
	b.confirm("restore the backup", "#backup-rows button")
	b.waitText("#backup-last", "Last restore dev/")
	b.waitText("#backup-last", "done at")
	rd, err = c.client.Read(context.Background(), &controlpb.ReadRequest{Offset: 0, Length: 4096})
	if err != nil || !bytes.Equal(rd.GetData(), bytes.Repeat([]byte{0xa1}, 4096)) {
		t.Fatalf("after the page restored the backup, block 0 is not what it held at the backup (%v)", err)
	}
	if problems := eval[[]string](b, "accessibility check at the end", a11yProblems); len(problems) > 0 {
		t.Errorf("accessibility with events, backups and badges shown: %s", strings.Join(problems, "; "))
	}
	if os.Getenv("DROVER_CONSOLE_SCREENSHOTS") != "" {
		b.saveArtifacts("end")
	}
	t.Logf("browser scenario took %s; rebuild progress seen at %v", time.Since(began).Round(time.Millisecond), seen)
}

// watchRebuild polls the rebuild progress bar until the rebuild is over
// and returns the distinct fractions it showed while in progress.
func watchRebuild(b *browser) []float64 {
	b.t.Helper()
	var seen []float64
	const probe = `(() => { const p = document.getElementById("rebuild-progress");
	  return document.getElementById("rebuild").hidden ? -1 : p.value / p.max; })()`
	eventually(b.t, "the rebuild of dev-3 ending", func() (bool, string) {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		f, err := chromedp.Run(ctx, chromedp.Evaluate[float64](probe))
		if err != nil {
			return false, err.Error()
		}
		if f >= 0 && (len(seen) == 0 || f != seen[len(seen)-1]) {
			seen = append(seen, f)
		}
		mode := eval[string](b, "dev-3's row", `(document.getElementById("replica-dev-3") || {}).textContent || ""`)
		time.Sleep(50 * time.Millisecond)
		return f < 0 && len(seen) > 0 && strings.Contains(mode, "RW"), fmt.Sprint(seen)
	})
	return seen
}
