package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/transports/certs"
)

func init() { subcommands = append(subcommands, newCertsCmd) }

const certsLong = `Make the certificates a cluster's links use for mutual TLS: "init" makes a
small CA (one per cluster) in --dir, "issue NAME" a certificate signed by it
for an engine, a replica or an operator. Every certificate works as both
server and client certificate; give a server's certificate the host names and
addresses it is reached at with --host.

The files are PEM: ca.crt and ca.key, NAME.crt and NAME.key (keys mode 0600,
the directory 0700). Keep ca.key off the nodes: only "issue" needs it. Hand a
process its certificate, key and ca.crt with --tls-cert, --tls-key, --tls-ca.

Running processes follow their files: "issue --replace NAME" renews a
certificate (new key and serial) and servers present it from their next
handshake; "revoke NAME" adds its serial to the revocation list beside
ca.crt (the file "revoked", one hex serial per line), and every endpoint
whose --tls-ca is that ca.crt refuses it from its next handshake. Servers
also take a replaced ca.crt at once; clients at their restart.`

const certsExample = `  drover certs init --dir ./certs --cluster prod
  drover certs issue engine-1 --dir ./certs --host 10.0.0.4,engine-1.example.com
  drover certs issue admin --dir ./certs
  drover engine ... --control 10.0.0.4:7370 --tls-cert certs/engine-1.crt --tls-key certs/engine-1.key --tls-ca certs/ca.crt
  drover volume info --control 10.0.0.4:7370 --tls-cert certs/admin.crt --tls-key certs/admin.key --tls-ca certs/ca.crt
  drover certs issue engine-1 --dir ./certs --host 10.0.0.4 --replace   # renew
  drover certs revoke admin --dir ./certs                               # copy certs/revoked to every node`

func newCertsCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{Use: "certs", Short: "Make a cluster CA and certificates for mutual TLS", Long: certsLong,
		Example: certsExample, Args: cobra.NoArgs}
	cmd.PersistentFlags().StringVar(&dir, "dir", "certs", "directory holding the CA and certificates")
	var cluster string
	initCmd := &cobra.Command{Use: "init", Short: "Make a new CA", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := certs.Init(dir, cluster, time.Now()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA for cluster %s in %s (keep %s secret)\n", cluster, filepath.Join(dir, certs.CAFile), certs.CAKeyFile)
			return nil
		}}
	initCmd.Flags().StringVar(&cluster, "cluster", "drover", "cluster name (the organization of every certificate the CA issues)")
	var hosts string
	var validity time.Duration
	var replace bool
	issue := &cobra.Command{Use: "issue NAME", Short: "Issue a certificate signed by the CA", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var hs []string
			if hosts != "" {
				hs = strings.Split(hosts, ",")
			}
			if err := certs.Issue(dir, certs.IssueOptions{Name: args[0], Hosts: hs, Validity: validity, Replace: replace}, time.Now()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificate %s and key %s\n",
				filepath.Join(dir, certs.CertFile(args[0])), filepath.Join(dir, certs.KeyFile(args[0])))
			return nil
		}}
	issue.Flags().StringVar(&hosts, "host", "", "comma-separated DNS names and IP addresses the holder serves on")
	issue.Flags().DurationVar(&validity, "validity", certs.DefaultValidity, "how long the certificate lasts")
	issue.Flags().BoolVar(&replace, "replace", false, "renew an existing certificate of that name (new key and serial number)")
	revoke := &cobra.Command{Use: "revoke NAME", Short: "Revoke a certificate: every endpoint of the CA refuses it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			serial, err := certs.Revoke(dir, args[0], time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s (serial %s) in %s: copy it beside ca.crt on every node\n",
				args[0], serial, filepath.Join(dir, certs.RevokedFile))
			return nil
		}}
	cmd.AddCommand(initCmd, issue, revoke)
	return cmd
}
