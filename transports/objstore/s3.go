package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config says where an S3 target is.
type S3Config struct {
	Endpoint string // host:port; default s3.amazonaws.com
	Insecure bool   // plain HTTP
	Region   string
	Bucket   string
	Prefix   string // key prefix inside the bucket, without slashes at the ends
	Creds    Credentials
	// MaxRetries bounds minio-go's retries of one request (default 3).
	MaxRetries int
}

// S3 is a target in an S3 bucket.
type S3 struct {
	c      *minio.Client
	bucket string
	prefix string
	name   string
}

// OpenS3 connects and checks that the bucket exists and that the
// credentials are accepted.
func OpenS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = "s3.amazonaws.com"
	}
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("s3 target: no bucket named (s3://BUCKET/prefix?endpoint=HOST:PORT)")
	}
	if cfg.Creds.AccessKey == "" || cfg.Creds.SecretKey == "" {
		return nil, fmt.Errorf("s3 target %s: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass a credentials file)", cfg.Bucket)
	}
	if cfg.MaxRetries <= 0 {
		cfg.MaxRetries = 3
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.Creds.AccessKey, cfg.Creds.SecretKey, ""),
		Secure:       !cfg.Insecure,
		Region:       cfg.Region,
		MaxRetries:   cfg.MaxRetries,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 target %s at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	}
	s := &S3{c: c, bucket: cfg.Bucket, prefix: cfg.Prefix, name: fmt.Sprintf("s3://%s/%s (%s)", cfg.Bucket, cfg.Prefix, cfg.Endpoint)}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3 target %s: %w", s.name, s.classify(err))
	}
	if !ok {
		return nil, fmt.Errorf("s3 target %s: bucket %q: %w", s.name, cfg.Bucket, ErrNoBucket)
	}
	return s, nil
}

func (s *S3) String() string { return s.name }

func (s *S3) key(k string) string {
	if s.prefix == "" {
		return k
	}
	return s.prefix + "/" + k
}

// classify maps S3 error codes to this package's errors.
func (s *S3) classify(err error) error {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return err
	}
	switch resp.Code {
	case "NoSuchKey":
		return fmt.Errorf("%w: %s", ErrNotExist, resp.Message)
	case "NoSuchBucket":
		return fmt.Errorf("%w: %s", ErrNoBucket, resp.Message)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
		"XAdminUserNotFound": // versitygw's answer to an unknown access key
		return fmt.Errorf("%w (%s: %s)", ErrAccessDenied, resp.Code, resp.Message)
	}
	if resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%w (HTTP 403 %s)", ErrAccessDenied, resp.Code)
	}
	return err
}

// Put uploads one object.
func (s *S3) Put(ctx context.Context, key string, data []byte) error {
	_, err := s.c.PutObject(ctx, s.bucket, s.key(key), bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
	if err != nil {
		return fmt.Errorf("put %s: %w", key, s.classify(err))
	}
	return nil
}

// Get downloads one object.
func (s *S3) Get(ctx context.Context, key string) ([]byte, error) {
	obj, err := s.c.GetObject(ctx, s.bucket, s.key(key), minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, s.classify(err))
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, s.classify(err))
	}
	return b, nil
}

// Delete removes one object.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := s.c.RemoveObject(ctx, s.bucket, s.key(key), minio.RemoveObjectOptions{}); err != nil {
		err = s.classify(err)
		if errors.Is(err, ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List lists keys under prefix.
func (s *S3) List(ctx context.Context, prefix string) ([]string, error) {
	var out []string
	strip := ""
	if s.prefix != "" {
		strip = s.prefix + "/"
	}
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, s.classify(o.Err))
		}
		out = append(out, strings.TrimPrefix(o.Key, strip))
	}
	sort.Strings(out)
	return out, nil
}
