-- The snapshot store's own database, beside Temporal's.
CREATE USER spinner WITH PASSWORD 'spinner';
CREATE DATABASE spinner OWNER spinner;
