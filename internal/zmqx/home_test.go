package zmqx

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestSingleHome keeps the protocol's names in this package: no other Go
// source of the repository (tests aside) may spell a verb as a message, a
// trusted header or the version in a string literal; it must use this
// package, so that the two sides cannot drift apart.
func TestSingleHome(t *testing.T) {
	root := moduleRoot(t)
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == here || (path != root && strings.HasPrefix(d.Name(), ".")) || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		checked++
		for _, bad := range protocolLiterals(t, path) {
			t.Errorf("%s: string literal %s spells a zmqx/1 name: use package zmqx", bad.pos, bad.lit)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no Go source found under", root)
	}
}

type literal struct {
	pos token.Position
	lit string
}

// protocolLiterals returns the string literals of a file that are a verb,
// start a message with one, or name a trusted header or the version.
func protocolLiterals(t *testing.T, path string) []literal {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var found []literal
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			return true
		}
		word, _, _ := strings.Cut(s, " ")
		if lookupVerb([]byte(word)) != VerbUnknown || strings.Contains(s, "ZMQX_") || strings.Contains(s, Version) {
			found = append(found, literal{fset.Position(lit.Pos()), lit.Value})
		}
		return true
	})
	return found
}

func moduleRoot(t *testing.T) string {
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the package")
		}
		dir = parent
	}
}
