package policy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch follows the policy file at path until ctx ends: each time its
// content changes, a valid new version goes to apply and an invalid one to
// reject (with every problem's line and column), and the caller keeps the
// last good policy. It watches the directory, so editors that save by
// renaming a new file over the old one are followed too.
func Watch(ctx context.Context, path string, apply func(*Policy), reject func(error)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy: %w", err)
	}
	defer w.Close()
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	last, _ := os.ReadFile(path)
	name := filepath.Clean(path)
	// Editors write in bursts (truncate, write, rename): act once the file
	// has been quiet briefly.
	const settle = 50 * time.Millisecond
	var timer *time.Timer
	fire := make(chan struct{}, 1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			reject(fmt.Errorf("watch policy: %w", err))
		case ev := <-w.Events:
			if filepath.Clean(ev.Name) != name {
				continue
			}
			if timer == nil {
				timer = time.AfterFunc(settle, func() {
					select {
					case fire <- struct{}{}:
					default:
					}
				})
			} else {
				timer.Reset(settle)
			}
		case <-fire:
			data, err := os.ReadFile(path)
			if err != nil {
				reject(fmt.Errorf("read policy: %w", err))
				continue
			}
			if bytes.Equal(data, last) {
				continue
			}
			last = data
			p, err := Parse(path, data)
			if err != nil {
				reject(err)
				continue
			}
			apply(p)
		}
	}
}
