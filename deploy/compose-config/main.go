// compose-config checks compose files the way `docker compose config` does, where the
// Docker CLI's compose plugin is not installed: it loads them with compose-spec/compose-go
// (the loader the plugin itself uses), validates them against the Compose Specification,
// interpolates variables (a `${VAR:?message}` without a value is an error) and prints the
// normalised project (or nothing with -q).
//
//	compose-config [-q] [--env-file FILE] -f docker-compose.yml
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

type files []string

func (f *files) String() string     { return fmt.Sprint(*f) }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var composeFiles, envFiles files
	flag.Var(&composeFiles, "f", "compose file (repeatable)")
	flag.Var(&envFiles, "env-file", "environment file instead of .env (repeatable)")
	quiet := flag.Bool("q", false, "only validate, print nothing")
	flag.Parse()
	if len(composeFiles) == 0 {
		fmt.Fprintln(os.Stderr, "usage: compose-config [-q] [--env-file FILE] -f FILE...")
		os.Exit(2)
	}
	options := []cli.ProjectOptionsFn{cli.WithOsEnv, cli.WithName("livelearn")}
	if len(envFiles) > 0 {
		options = append(options, cli.WithEnvFiles(envFiles...))
	}
	options = append(options, cli.WithDotEnv)
	opts, err := cli.NewProjectOptions(composeFiles, options...)
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	if *quiet {
		return
	}
	out, err := project.MarshalYAML()
	if err != nil {
		fail(err)
	}
	_, _ = os.Stdout.Write(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
