/** The shapes of names docs/api.md ("Names") allows. Shared by the pool parser and the HTTP schemas. */
export const NAME_CHARS = 'A-Za-z0-9._:-';
export const CLIENT_ID_PATTERN = `^[${NAME_CHARS}]{1,255}$`;
export const IDENTIFIER_PATTERN = `^[${NAME_CHARS}]{1,128}$`;
export const IDENTIFIER_RE = new RegExp(IDENTIFIER_PATTERN);
