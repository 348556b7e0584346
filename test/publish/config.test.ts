import { describe, expect, it } from 'vitest';
import { createS3Client, describeTarget, resolveS3Target } from '../../tools/s3/config.ts';

const creds = { B2_KEY_ID: 'kid', B2_SECRET_KEY: 'sek' };

describe('S3 configuration from the environment', () => {
  it('B2 users: B2_BUCKET and B2_REGION give the Backblaze endpoint, path-style', () => {
    expect(resolveS3Target({}, { ...creds, B2_BUCKET: 'models', B2_REGION: 'us-west-004' })).toEqual({
      bucket: 'models',
      endpoint: 'https://s3.us-west-004.backblazeb2.com',
      region: 'us-west-004',
      forcePathStyle: true,
      credentials: { accessKeyId: 'kid', secretAccessKey: 'sek' },
    });
  });

  it('R2_ACCOUNT_ID gives the R2 endpoint with region auto; S3_ENDPOINT wins over both; flags win over env', () => {
    const r2 = resolveS3Target({}, { ...creds, B2_BUCKET: 'b', B2_REGION: 'us-west-004', R2_ACCOUNT_ID: 'abc123' });
    expect([r2.endpoint, r2.region, r2.forcePathStyle]).toEqual(['https://abc123.r2.cloudflarestorage.com', 'auto', true]);
    const minio = resolveS3Target({}, { ...creds, B2_BUCKET: 'b', R2_ACCOUNT_ID: 'abc123', S3_ENDPOINT: 'http://127.0.0.1:9000' });
    expect([minio.endpoint, minio.region]).toEqual(['http://127.0.0.1:9000', 'us-east-1']);
    const flags = resolveS3Target({ bucket: 'f', endpoint: 'http://localhost:9000', region: 'eu' }, { ...creds, B2_BUCKET: 'b', S3_ENDPOINT: 'http://x' });
    expect([flags.bucket, flags.endpoint, flags.region]).toEqual(['f', 'http://localhost:9000', 'eu']);
    const aws = resolveS3Target({}, { ...creds, B2_BUCKET: 'b' });
    expect([aws.endpoint, aws.region, aws.forcePathStyle]).toEqual([undefined, 'us-east-1', false]);
  });

  it('refuses what it cannot use, in one line that names no secret', () => {
    expect(() => resolveS3Target({}, { B2_BUCKET: 'b', B2_KEY_ID: 'kid' })).toThrow('no credentials for bucket "b" at AWS S3: set B2_KEY_ID and B2_SECRET_KEY');
    expect(() => resolveS3Target({}, { ...creds })).toThrow('publish: no bucket: pass --bucket or set B2_BUCKET');
    expect(() => resolveS3Target({}, { ...creds, B2_BUCKET: 'b', S3_ENDPOINT: 'http://user:hunter2@host' })).toThrow(
      'S3_ENDPOINT: must not carry credentials; use B2_KEY_ID and B2_SECRET_KEY',
    );
    expect(() => resolveS3Target({}, { ...creds, B2_BUCKET: 'b', S3_ENDPOINT: 'ftp://host?sig=hunter2' })).toThrow('S3_ENDPOINT: "ftp://host" must be http:// or https://');
    expect(describeTarget({ bucket: 'b', endpoint: 'https://host:9000/?X-Amz-Signature=s' })).toBe('bucket "b" at https://host:9000');
  });

  it('the client sends checksums only when required (R2 and others reject aws-chunked bodies)', async () => {
    const client = createS3Client(resolveS3Target({}, { ...creds, B2_BUCKET: 'b', S3_ENDPOINT: 'http://127.0.0.1:1' }), { maxAttempts: 3 });
    expect(await client.config.requestChecksumCalculation()).toBe('WHEN_REQUIRED');
    expect(await client.config.responseChecksumValidation()).toBe('WHEN_REQUIRED');
    expect(await client.config.maxAttempts()).toBe(3);
    expect(client.config.forcePathStyle).toBe(true);
    client.destroy();
  });
});
