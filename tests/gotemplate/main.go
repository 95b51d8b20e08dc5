// The reference engine for bootcfg's template subset (_bootcfg/template.py):
// Go's own text/template, run the way matchbox runs it (missingkey=error) on
// data that encoding/json decoded. Reads a JSON list of {"template", "data"}
// on stdin; writes a JSON list of {"out"} or {"parse_error"} or {"exec_error"}.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type testCase struct {
	Template string      `json:"template"`
	Data     interface{} `json:"data"`
}

func main() {
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	results := []map[string]string{}
	for _, c := range cases {
		t, err := template.New("t").Option("missingkey=error").Parse(c.Template)
		if err != nil {
			results = append(results, map[string]string{"parse_error": err.Error()})
			continue
		}
		var out strings.Builder
		if err := t.Execute(&out, c.Data); err != nil {
			results = append(results, map[string]string{"exec_error": err.Error()})
			continue
		}
		results = append(results, map[string]string{"out": out.String()})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		panic(err)
	}
}
