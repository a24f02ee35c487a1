-- Profiles are JSON text of a few KiB: PostgreSQL compresses them when it TOASTs them. Its default
-- compressor (pglz) took most of the database's CPU in the autosave benchmark, since every save
-- writes the value twice (docs and history). lz4 compresses such text several times faster.
-- Only values written from now on use it; older values stay readable as they are.
ALTER TABLE docs ALTER COLUMN value SET COMPRESSION lz4;
ALTER TABLE docs ALTER COLUMN inbox SET COMPRESSION lz4;
ALTER TABLE history ALTER COLUMN value SET COMPRESSION lz4;
