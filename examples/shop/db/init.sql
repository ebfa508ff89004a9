CREATE ROLE app LOGIN;
CREATE DATABASE shop OWNER app;
\connect shop app
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(8, 2) NOT NULL);
INSERT INTO items (name, price) VALUES ('kettle', 24.90), ('teapot', 31.50), ('mug', 7.20);
