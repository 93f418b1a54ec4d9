// Command workload is the application make e2e's Pods run on a Drover
// volume (a static binary in an image of its own; the cluster has no
// registry and no shell image):
//
//	workload write DIR N    write N files of random data and SHA256SUMS, fsync, exit
//	workload verify DIR     check every file against SHA256SUMS; exit 1 on a mismatch
//	workload verify DIR hold    the same, then keep the volume in use until SIGTERM
//	workload churn DIR      write a file and append its sum every 100 ms until
//	                        SIGTERM, printing the filesystem's size each second
//
// Each prints what it did on stdout (the Pod's log); verify's last line is
// "verified N files", churn's size lines are "size BYTES".
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const sumsFile = "SHA256SUMS"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: workload write DIR N | verify DIR | churn DIR")
	}
	dir := args[1]
	switch args[0] {
	case "write":
		if len(args) != 3 {
			return errors.New("usage: workload write DIR N")
		}
		n, err := strconv.Atoi(args[2])
		if err != nil || n < 1 {
			return fmt.Errorf("file count %q: want a positive number", args[2])
		}
		for i := 0; i < n; i++ {
			if err := writeFile(dir, fmt.Sprintf("file-%04d", i), 1<<20); err != nil {
				return err
			}
		}
		fmt.Printf("wrote %d files\n", n)
		return nil
	case "verify":
		n, err := verify(dir)
		if err != nil {
			return err
		}
		fmt.Printf("verified %d files\n", n)
		if len(args) > 2 && args[2] == "hold" {
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
			<-stop
		}
		return nil
	case "churn":
		return churn(dir)
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// writeFile writes size random bytes to dir/name, fsyncs it, and appends
// its sum to SHA256SUMS (fsynced too).
func writeFile(dir, name string, size int) error {
	buf := make([]byte, size)
	if _, err := rand.Read(buf); err != nil {
		return err
	}
	if err := writeSync(filepath.Join(dir, name), buf, os.O_CREATE|os.O_TRUNC|os.O_WRONLY); err != nil {
		return err
	}
	sum := sha256.Sum256(buf)
	line := fmt.Sprintf("%s  %s\n", hex.EncodeToString(sum[:]), name)
	return writeSync(filepath.Join(dir, sumsFile), []byte(line), os.O_CREATE|os.O_APPEND|os.O_WRONLY)
}

func writeSync(path string, b []byte, flags int) error {
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// verify checks every file SHA256SUMS names and returns how many there are.
func verify(dir string) (int, error) {
	f, err := os.Open(filepath.Join(dir, sumsFile))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		want, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			return n, fmt.Errorf("%s: bad line %q", sumsFile, sc.Text())
		}
		g, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return n, err
		}
		h := sha256.New()
		_, err = io.Copy(h, g)
		g.Close()
		if err != nil {
			return n, fmt.Errorf("read %s: %w", name, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return n, fmt.Errorf("%s: sha256 %s, want %s", name, got, want)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return n, err
	}
	if n == 0 {
		return 0, fmt.Errorf("%s names no files", sumsFile)
	}
	return n, nil
}

// churn writes 256 KiB files until SIGTERM and reports the filesystem's
// size every second. Its files are numbered on from the last a churn
// before it left in dir, so that every file SHA256SUMS names keeps the
// content it was written with.
func churn(dir string) error {
	first, err := nextChurnIndex(dir)
	if err != nil {
		return err
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	write := time.NewTicker(100 * time.Millisecond)
	defer write.Stop()
	report := time.NewTicker(time.Second)
	defer report.Stop()
	n := 0
	printSize := func() {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err == nil {
			fmt.Printf("size %d files %d\n", uint64(st.Blocks)*uint64(st.Bsize), n)
		}
	}
	printSize()
	for {
		select {
		case <-stop:
			fmt.Printf("churned %d files\n", n)
			return nil
		case <-report.C:
			printSize()
		case <-write.C:
			if err := writeFile(dir, fmt.Sprintf("churn-%06d", first+n), 256<<10); err != nil {
				return err
			}
			n++
		}
	}
}

// nextChurnIndex is one past the highest churn-N file in dir (0: none).
func nextChurnIndex(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	next := 0
	for _, e := range entries {
		if i, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "churn-")); err == nil && strings.HasPrefix(e.Name(), "churn-") {
			next = max(next, i+1)
		}
	}
	return next, nil
}
