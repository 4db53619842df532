-- List columns hold JSON arrays of strings instead of joined text, so the store
-- decodes them by name (and a value can hold the old separator):
--   api_tokens.roles         was comma-joined ("admin,deployer")
--   host_status.missing_env  was comma-joined
--   host_status.drift        was newline-joined
-- Existing rows are converted in place; an empty list becomes '[]'. The
-- columns' old DEFAULT '' stays (SQLite cannot alter a default); every writer
-- sets them.

UPDATE api_tokens SET roles = (
    WITH RECURSIVE split(item, rest) AS (
        SELECT NULL, api_tokens.roles || ','
        UNION ALL
        SELECT substr(rest, 1, instr(rest, ',') - 1), substr(rest, instr(rest, ',') + 1)
        FROM split WHERE rest != ''
    )
    SELECT json_group_array(item) FROM split WHERE item IS NOT NULL AND item != ''
);

UPDATE host_status SET missing_env = (
    WITH RECURSIVE split(item, rest) AS (
        SELECT NULL, host_status.missing_env || ','
        UNION ALL
        SELECT substr(rest, 1, instr(rest, ',') - 1), substr(rest, instr(rest, ',') + 1)
        FROM split WHERE rest != ''
    )
    SELECT json_group_array(item) FROM split WHERE item IS NOT NULL AND item != ''
);

UPDATE host_status SET drift = (
    WITH RECURSIVE split(item, rest) AS (
        SELECT NULL, host_status.drift || char(10)
        UNION ALL
        SELECT substr(rest, 1, instr(rest, char(10)) - 1), substr(rest, instr(rest, char(10)) + 1)
        FROM split WHERE rest != ''
    )
    SELECT json_group_array(item) FROM split WHERE item IS NOT NULL AND item != ''
);
