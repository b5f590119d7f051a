package caddyzmq

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// The README is the user's reference for the zmq directive. These tests keep
// its option table and its syntax block in step with what the code accepts:
// the Caddyfile parser (probed, not read), Handler's and Pool's JSON fields,
// the syntax block on UnmarshalCaddyfile, and the defaults the code applies.
// When one fails, it names the options on each side that the other lacks.

const readmePath = "../README.md"

// caddyfileToJSON names the Caddyfile subdirectives whose JSON field has
// another name. Every other subdirective has the JSON field of its own name.
var caddyfileToJSON = map[string]string{
	"pool": "pools",
}

// jsonOnlyFields are Handler JSON fields with no Caddyfile subdirective.
var jsonOnlyFields = map[string]string{}

// poolCaddyfileToJSON and poolJSONOnlyFields are the same for a pool block.
var poolCaddyfileToJSON = map[string]string{
	"to": "workers",
}

var poolJSONOnlyFields = map[string]string{
	"name": "the pool directive's first argument",
}

// readmeDefaults checks, for every option of the README's table, what its
// "default" column says against what the code applies.
var readmeDefaults = map[string]func(readme string) error{
	"request_endpoint":        isText(DefaultRequestEndpoint),
	"reply_endpoint":          isText(DefaultReplyEndpoint),
	"sender_id":               isText("derived"), // DefaultSenderID
	"header_format":           isHeaderFormat(""),
	"pattern":                 isText("/"), // set by Provision
	"reply_timeout":           isDuration(DefaultReplyTimeout),
	"stream_timeout":          isDuration(0),
	"max_request_body":        isSize(DefaultMaxRequestBody),
	"max_buffered_reply":      isSize(DefaultMaxBufferedReply),
	"websocket_max_message":   isSize(DefaultWebSocketMaxMessage),
	"websocket_ping_interval": isDuration(DefaultWebSocketPingInterval),
	"websocket_idle_timeout":  isDuration(DefaultWebSocketIdleTimeout),
	"upload_temp_store":       isText("off"),
	"upload_threshold":        isSize(DefaultUploadThreshold),
	"heartbeat":               isDuration(DefaultHeartbeat),
	"max_inflight":            isInt(DefaultMaxInflight),
	"queue_timeout":           isDuration(DefaultQueueTimeout),
	"control_endpoint":        isText("off"),
	"reply_window":            isSize(DefaultReplyWindow),
	"dispatch_timeout":        isDuration(DefaultDispatchTimeout),
	"hung_timeout":            isDuration(DefaultHungTimeout),
	"retries":                 isInt(1), // set by Provision
	"affinity":                isText("off"),
	"broadcast":               isText("off"),
	"curve":                   isText("off"),
	"pool":                    isText("one pool"),
	"lb_policy":               isText("random"), // RandomSelection in Provision
}

func TestReadmeOptionTableMatchesCode(t *testing.T) {
	md := readReadme(t)
	table, err := optionTable(md)
	if err != nil {
		t.Fatal(err)
	}
	syntax, err := readmeSyntaxBlock(md)
	if err != nil {
		t.Fatal(err)
	}
	docSyntax, err := unmarshalCaddyfileDocBlock(".")
	if err != nil {
		t.Fatal(err)
	}
	parser := acceptedSubdirectives(t, candidateNames(t, table, syntax, docSyntax))
	jsonNames := jsonFieldNames(reflect.TypeOf(Handler{}))

	tableNames := sortedKeys(table)
	compareSets(t, "README option table", tableNames, "README syntax block", blockOptions(syntax, "zmq"))
	compareSets(t, "README option table", tableNames, "Caddyfile parser", parser)
	compareSets(t, "README option table", tableNames, "UnmarshalCaddyfile doc block", blockOptions(docSyntax, "zmq"))
	compareSets(t, "Caddyfile parser (as JSON names)", renamed(parser, caddyfileToJSON),
		"Handler JSON fields", without(jsonNames, jsonOnlyFields))
}

func TestReadmePoolBlockMatchesCode(t *testing.T) {
	md := readReadme(t)
	syntax, err := readmeSyntaxBlock(md)
	if err != nil {
		t.Fatal(err)
	}
	docSyntax, err := unmarshalCaddyfileDocBlock(".")
	if err != nil {
		t.Fatal(err)
	}
	readmePool := blockOptions(syntax, "zmq", "pool")
	jsonNames := jsonFieldNames(reflect.TypeOf(Pool{}))
	candidates := slices.Concat(readmePool, blockOptions(docSyntax, "zmq", "pool"), jsonNames, sortedKeys(poolCaddyfileToJSON), goStringLiterals(t, "."))
	parser := acceptedPoolSubdirectives(t, candidates)

	compareSets(t, "README pool block", readmePool, "Caddyfile pool parser", parser)
	compareSets(t, "README pool block", readmePool, "UnmarshalCaddyfile doc pool block", blockOptions(docSyntax, "zmq", "pool"))
	compareSets(t, "Caddyfile pool parser (as JSON names)", renamed(parser, poolCaddyfileToJSON),
		"Pool JSON fields", without(jsonNames, poolJSONOnlyFields))
}

func TestReadmeDefaultsMatchCode(t *testing.T) {
	table, err := optionTable(readReadme(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range sortedKeys(table) {
		check, ok := readmeDefaults[name]
		if !ok {
			t.Errorf("option %s: readmeDefaults in %s has no check of its default (README says %q); add one",
				name, "module/readme_test.go", table[name])
			continue
		}
		if err := check(table[name]); err != nil {
			t.Errorf("option %s: README default %q: %v", name, table[name], err)
		}
	}
}

// TestReadmeExamplesParse parses every zmq block of the README's Caddyfile
// examples (all but the syntax block, whose placeholders are not values).
func TestReadmeExamplesParse(t *testing.T) {
	md := readReadme(t)
	syntax, err := readmeSyntaxBlock(md)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range fences(md) {
		if !isCaddyfileFence(f.info) || slices.Equal(f.lines, syntax) {
			continue
		}
		for _, block := range directiveBlocks(f.lines, "zmq") {
			n++
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
				t.Errorf("README example (line %d) does not parse: %v\n%s", f.line, err, block)
			}
		}
	}
	if n == 0 {
		t.Error("found no zmq example in the README's Caddyfile blocks")
	}
}

// TestReadmeParsers pins the Markdown and block parsing the tests above rely
// on, so that a formatting change in the README cannot make them vacuous.
func TestReadmeParsers(t *testing.T) {
	md := "# t\n\n## The `zmq` directive\n\n```caddyfile\nsite {\n\tzmq [<a> <b>] {\n\t\tfoo <x>   # a comment\n\t\tpool [<n>] {\n\t\t\tto <a> <b>\n\t\t}\n\t\tbar\n\t}\n}\n```\n\n" +
		"| Option | Meaning | Default |\n|:--|--|--:|\n| **`foo`** | a \\| b | `10MiB` (x) |\n|`bar`, `baz`|c| off |\n\ntext\n"
	table, err := optionTable(md)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"foo": "10MiB", "bar": "off", "baz": "off"}
	if !reflect.DeepEqual(table, want) {
		t.Errorf("optionTable = %v, want %v", table, want)
	}
	syntax, err := readmeSyntaxBlock(md)
	if err != nil {
		t.Fatal(err)
	}
	if got := blockOptions(syntax, "zmq"); !slices.Equal(got, []string{"bar", "foo", "pool"}) {
		t.Errorf("zmq options = %v", got)
	}
	if got := blockOptions(syntax, "zmq", "pool"); !slices.Equal(got, []string{"to"}) {
		t.Errorf("pool options = %v", got)
	}
	if _, err := optionTable("| name | default |\n|--|--|\n| `x` | 1 |\n"); err == nil {
		t.Error("a README without an option table passed")
	}
	if err := isSize(10 << 20)("10MB"); err == nil {
		t.Error("10MB passed for 10 MiB")
	}
}

// --- the README ---

func readReadme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatalf("reading the README: %v", err)
	}
	return string(b)
}

type fence struct {
	info  string
	line  int // 1-based line of the opening fence
	lines []string
}

// fences returns the fenced code blocks of a Markdown text.
func fences(md string) []fence {
	var out []fence
	var cur *fence
	var marker string
	for i, line := range strings.Split(md, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == nil {
			for _, m := range []string{"```", "~~~"} {
				if strings.HasPrefix(trimmed, m) {
					cur, marker = &fence{info: strings.TrimSpace(strings.TrimLeft(trimmed, m[:1])), line: i + 1}, m
					break
				}
			}
			continue
		}
		if strings.HasPrefix(trimmed, marker) && strings.Trim(trimmed, marker[:1]) == "" {
			out = append(out, *cur)
			cur = nil
			continue
		}
		cur.lines = append(cur.lines, line)
	}
	return out
}

func isCaddyfileFence(info string) bool {
	return strings.EqualFold(strings.Fields(info + " x")[0], "caddyfile")
}

// readmeSyntaxBlock is the first Caddyfile block after the heading of the
// zmq directive's section.
func readmeSyntaxBlock(md string) ([]string, error) {
	heading := -1
	for i, line := range strings.Split(md, "\n") {
		l := strings.ToLower(line)
		if strings.HasPrefix(l, "#") && strings.Contains(l, "zmq") && strings.Contains(l, "directive") {
			heading = i + 1
			break
		}
	}
	if heading < 0 {
		return nil, fmt.Errorf("README: no heading of the zmq directive's section (a heading with \"zmq\" and \"directive\")")
	}
	for _, f := range fences(md) {
		if f.line > heading && isCaddyfileFence(f.info) {
			return f.lines, nil
		}
	}
	return nil, fmt.Errorf("README: no ```caddyfile block after the zmq directive's heading (line %d)", heading)
}

// optionTable finds the one Markdown table whose header has an "option"
// column and returns, per option named in it, its "default" cell. A row may
// name several options (`a`, `b`); names are taken from code spans, or the
// cell's text when it has none.
func optionTable(md string) (map[string]string, error) {
	lines := strings.Split(md, "\n")
	var found map[string]string
	for i := 0; i < len(lines); i++ {
		header := tableCells(lines[i])
		optCol, defCol := columnIndex(header, "option"), columnIndex(header, "default")
		if optCol < 0 || i+1 >= len(lines) || !isDelimiterRow(lines[i+1]) {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("README line %d: a second table with an \"option\" column", i+1)
		}
		if defCol < 0 {
			return nil, fmt.Errorf("README line %d: the option table has no \"default\" column", i+1)
		}
		found = map[string]string{}
		for i += 2; i < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i]), "|"); i++ {
			row := tableCells(lines[i])
			if optCol >= len(row) || defCol >= len(row) {
				return nil, fmt.Errorf("README line %d: option table row has %d cells", i+1, len(row))
			}
			names := codeSpans(row[optCol])
			if len(names) == 0 {
				names = []string{strings.Trim(row[optCol], "*_ ")}
			}
			def := row[defCol]
			if spans := codeSpans(def); len(spans) > 0 {
				def = spans[0]
			}
			for _, name := range names {
				if !optionName.MatchString(name) {
					return nil, fmt.Errorf("README line %d: %q is not an option name", i+1, name)
				}
				if _, dup := found[name]; dup {
					return nil, fmt.Errorf("README line %d: option %s is in the table twice", i+1, name)
				}
				found[name] = strings.TrimSpace(def)
			}
		}
	}
	if found == nil {
		return nil, fmt.Errorf("README: no table with \"option\" and \"default\" columns")
	}
	return found, nil
}

var optionName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// tableCells splits a Markdown table row on its unescaped pipes.
func tableCells(line string) []string {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "|") {
		return nil
	}
	line = strings.TrimPrefix(line, "|")
	if strings.HasSuffix(line, "|") && !strings.HasSuffix(line, `\|`) {
		line = strings.TrimSuffix(line, "|")
	}
	var cells []string
	var cell strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			cell.WriteByte('|')
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(cell.String()))
			cell.Reset()
		default:
			cell.WriteByte(line[i])
		}
	}
	return append(cells, strings.TrimSpace(cell.String()))
}

func isDelimiterRow(line string) bool {
	cells := tableCells(line)
	for _, c := range cells {
		if strings.Trim(c, ":-") != "" || !strings.Contains(c, "-") {
			return false
		}
	}
	return len(cells) > 0
}

func columnIndex(header []string, name string) int {
	for i, h := range header {
		if strings.EqualFold(strings.Trim(h, "*_ "), name) {
			return i
		}
	}
	return -1
}

var codeSpan = regexp.MustCompile("`([^`]+)`")

func codeSpans(s string) []string {
	var out []string
	for _, m := range codeSpan.FindAllStringSubmatch(s, -1) {
		out = append(out, strings.TrimSpace(m[1]))
	}
	return out
}

// --- Caddyfile syntax blocks ---

// blockOptions returns the sorted first words of the lines directly inside
// the innermost block at path (e.g. "zmq", "pool"), in every such block.
func blockOptions(lines []string, path ...string) []string {
	var stack []string
	set := map[string]bool{}
	for _, line := range lines {
		words := strings.Fields(stripComment(line))
		if len(words) == 0 {
			continue
		}
		if words[0] == "}" {
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		if len(stack) >= len(path) && slices.Equal(stack[len(stack)-len(path):], path) {
			set[words[0]] = true
		}
		if words[len(words)-1] == "{" {
			stack = append(stack, words[0])
		}
	}
	return sortedKeys(set)
}

// directiveBlocks returns each block of the named directive, from its line
// to its closing brace, as Caddyfile text.
func directiveBlocks(lines []string, name string) []string {
	var out []string
	for i := 0; i < len(lines); i++ {
		words := strings.Fields(stripComment(lines[i]))
		if len(words) == 0 || words[0] != name {
			continue
		}
		depth, j := 0, i
		for ; j < len(lines); j++ {
			w := strings.Fields(stripComment(lines[j]))
			if len(w) > 0 && w[len(w)-1] == "{" {
				depth++
			}
			if len(w) > 0 && w[0] == "}" {
				depth--
			}
			if depth == 0 {
				break
			}
		}
		out = append(out, strings.Join(lines[i:min(j+1, len(lines))], "\n"))
		i = j
	}
	return out
}

func stripComment(line string) string {
	for i := 0; i < len(line); i++ {
		if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			return line[:i]
		}
	}
	return line
}

// unmarshalCaddyfileDocBlock is the syntax block in the doc comment of
// (*Handler).UnmarshalCaddyfile, wherever in the package it is.
func unmarshalCaddyfileDocBlock(dir string) ([]string, error) {
	var doc string
	err := eachGoFile(dir, func(f *ast.File) {
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if ok && fn.Name.Name == "UnmarshalCaddyfile" && fn.Recv != nil && fn.Doc != nil && receiverIs(fn, "Handler") {
				doc = fn.Doc.Text()
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if doc == "" {
		return nil, fmt.Errorf("no doc comment on (*Handler).UnmarshalCaddyfile")
	}
	return strings.Split(doc, "\n"), nil
}

func receiverIs(fn *ast.FuncDecl, name string) bool {
	typ := fn.Recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	id, ok := typ.(*ast.Ident)
	return ok && id.Name == name
}

func eachGoFile(dir string, fn func(*ast.File)) error {
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return err
	}
	fset := token.NewFileSet()
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		fn(f)
	}
	return nil
}

// goStringLiterals returns the identifier-like string literals of the
// package's source: candidates for subdirective names, so that an option
// the parser accepts but no document names is still found.
func goStringLiterals(t *testing.T, dir string) []string {
	t.Helper()
	set := map[string]bool{}
	err := eachGoFile(dir, func(f *ast.File) {
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && optionName.MatchString(s) {
					set[s] = true
				}
			}
			return true
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return sortedKeys(set)
}

// --- what the code accepts ---

func candidateNames(t *testing.T, table map[string]string, syntax, docSyntax []string) []string {
	return slices.Concat(sortedKeys(table), blockOptions(syntax, "zmq"), blockOptions(docSyntax, "zmq"),
		jsonFieldNames(reflect.TypeOf(Handler{})), sortedKeys(caddyfileToJSON), goStringLiterals(t, "."))
}

// acceptedSubdirectives returns the candidates the zmq parser knows: those
// it does not reject the way it rejects a name that is surely unknown.
func acceptedSubdirectives(t *testing.T, candidates []string) []string {
	return probe(t, candidates, func(name string) error {
		var h Handler
		return h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("zmq {\n" + name + " x\n}"))
	})
}

func acceptedPoolSubdirectives(t *testing.T, candidates []string) []string {
	return probe(t, candidates, func(name string) error {
		var h Handler
		return h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("zmq {\npool {\n" + name + " x\n}\n}"))
	})
}

func probe(t *testing.T, candidates []string, parse func(name string) error) []string {
	t.Helper()
	const bogus = "no_such_option_zz"
	unknown := parse(bogus)
	if unknown == nil {
		t.Fatalf("the parser accepted the option %q", bogus)
	}
	// The parser's message for an unknown name, with that name in it.
	unknownMsg := strings.Split(unknown.Error(), bogus)
	set := map[string]bool{}
	for _, name := range candidates {
		if err := parse(name); err == nil || err.Error() != strings.Join(unknownMsg, name) {
			set[name] = true
		}
	}
	return sortedKeys(set)
}

func jsonFieldNames(typ reflect.Type) []string {
	var names []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.IsExported() && name != "" && name != "-" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// --- defaults ---

func isText(want string) func(string) error {
	return func(readme string) error {
		if !strings.EqualFold(readme, want) {
			return fmt.Errorf("the code's default is %q", want)
		}
		return nil
	}
}

func isDuration(want time.Duration) func(string) error {
	return func(readme string) error {
		got, err := caddy.ParseDuration(readme)
		if err != nil || got != want {
			return fmt.Errorf("the code's default is %v (parsed: %v, %v)", want, got, err)
		}
		return nil
	}
}

func isSize(want int64) func(string) error {
	return func(readme string) error {
		got, err := parseSize(readme)
		if err != nil || got != want {
			return fmt.Errorf("the code's default is %d bytes, the README's is %d (%v)", want, got, err)
		}
		return nil
	}
}

func isInt(want int) func(string) error {
	return func(readme string) error {
		got, err := strconv.Atoi(readme)
		if err != nil || got != want {
			return fmt.Errorf("the code's default is %d", want)
		}
		return nil
	}
}

func isHeaderFormat(codeValue string) func(string) error {
	return func(readme string) error {
		want, err := mongrel2.ParseHeaderFormat(codeValue)
		if err != nil {
			return err
		}
		got, err := mongrel2.ParseHeaderFormat(readme)
		if err != nil || got != want {
			return fmt.Errorf("not the format the code uses by default (%v)", err)
		}
		return nil
	}
}

// --- sets ---

func compareSets(t *testing.T, aName string, a []string, bName string, b []string) {
	t.Helper()
	var onlyA, onlyB []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			onlyA = append(onlyA, x)
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			onlyB = append(onlyB, x)
		}
	}
	if len(onlyA) > 0 || len(onlyB) > 0 {
		t.Errorf("%s and %s differ:\n  only in %s: %v\n  only in %s: %v",
			aName, bName, aName, onlyA, bName, onlyB)
	}
}

func renamed(names []string, as map[string]string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if to, ok := as[n]; ok {
			n = to
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func without(names []string, drop map[string]string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { _, ok := drop[n]; return ok })
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// maxReadmeLines keeps the README readable in one sitting (issue 15): a
// reference, with guides and lab notes in docs/.
const maxReadmeLines = 400

func TestReadmeShort(t *testing.T) {
	if n := strings.Count(readReadme(t), "\n"); n > maxReadmeLines {
		t.Errorf("README.md has %d lines, more than %d: move detail to docs/", n, maxReadmeLines)
	}
}
