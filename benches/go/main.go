// Command extract measures what the Go body-based router does with a
// request body: encoding/json into a map[string]any, then the "model"
// string. It reads the bodies written by `bench-bodies DIR` and prints one
// line per body: "<case> <bytes> <ns per op>".
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func extract(body []byte) (string, error) {
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return "", err
	}
	model, ok := m["model"].(string)
	if !ok {
		return "", fmt.Errorf("no model")
	}
	return model, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: extract DIR")
		os.Exit(2)
	}
	files, err := filepath.Glob(filepath.Join(os.Args[1], "*.json"))
	if err != nil || len(files) == 0 {
		fmt.Fprintln(os.Stderr, "no bodies in", os.Args[1])
		os.Exit(1)
	}
	sort.Strings(files)
	for _, file := range files {
		body, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := extract(body); err != nil {
			fmt.Fprintln(os.Stderr, file, err)
			os.Exit(1)
		}
		result := testing.Benchmark(func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for i := 0; i < b.N; i++ {
				if _, err := extract(body); err != nil {
					b.Fatal(err)
				}
			}
		})
		name := strings.TrimSuffix(filepath.Base(file), ".json")
		fmt.Printf("%s %d %d\n", name, len(body), result.NsPerOp())
	}
}
