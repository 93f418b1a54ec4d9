// Package objstore is where backups live: a small key/value interface over
// object stores, with a directory target (local disk or NFS) and an S3
// target (any S3-compatible server, through minio-go).
//
// Keys are slash-separated paths. A Put is all or nothing: a reader never
// sees a partly written object (the directory target writes a temporary
// file, syncs it and renames it; S3 PUTs are atomic), which is what lets
// backups write their manifest last.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Errors callers branch on (wrapped with context).
var (
	// ErrNotExist: no object has that key.
	ErrNotExist = errors.New("object does not exist")
	// ErrNoBucket: the target's bucket (or directory) does not exist.
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrAccessDenied: the credentials were refused.
	ErrAccessDenied = errors.New("access denied: check the credentials")
)

// Store is a backup target.
type Store interface {
	// Put stores data under key, replacing any object there, atomically.
	Put(ctx context.Context, key string, data []byte) error
	// Get returns the object at key (ErrNotExist if none).
	Get(ctx context.Context, key string) ([]byte, error)
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns every key starting with prefix, sorted.
	List(ctx context.Context, prefix string) ([]string, error)
	// String names the target for messages.
	String() string
}

// Credentials for an S3 target.
type Credentials struct {
	AccessKey, SecretKey string
}

// CredentialsFromEnv reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
// or, when file is not empty, a file of `access_key = ...` and
// `secret_key = ...` lines (the file wins).
func CredentialsFromEnv(file string) (Credentials, error) {
	c := Credentials{AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY")}
	if file == "" {
		return c, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return c, fmt.Errorf("credentials file: %w", err)
	}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return c, fmt.Errorf("credentials file %s line %d: want key = value", file, n+1)
		}
		switch strings.TrimSpace(k) {
		case "access_key", "aws_access_key_id":
			c.AccessKey = strings.TrimSpace(v)
		case "secret_key", "aws_secret_access_key":
			c.SecretKey = strings.TrimSpace(v)
		default:
			return c, fmt.Errorf("credentials file %s line %d: unknown key %q", file, n+1, strings.TrimSpace(k))
		}
	}
	return c, nil
}

// Open opens a target by URL: a path or file:///path for a directory
// (which must exist), or s3://bucket[/prefix]?endpoint=host:port[&insecure=true][&region=R]
// for S3 (the endpoint defaults to s3.amazonaws.com). It checks that the
// bucket exists and the credentials work before returning.
func Open(ctx context.Context, target string, creds Credentials) (Store, error) {
	if !strings.Contains(target, "://") {
		return OpenDir(target)
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("backup target %q: %w", target, err)
	}
	switch u.Scheme {
	case "file":
		return OpenDir(u.Path)
	case "s3":
		q := u.Query()
		cfg := S3Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"), Endpoint: q.Get("endpoint"),
			Insecure: q.Get("insecure") == "true" || q.Get("insecure") == "1", Region: q.Get("region"), Creds: creds}
		return OpenS3(ctx, cfg)
	}
	return nil, fmt.Errorf("backup target %q: unknown scheme %q (want a path, file:// or s3://)", target, u.Scheme)
}
