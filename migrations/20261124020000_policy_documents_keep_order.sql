-- Policy documents keep the order they were written in. POLICY.md breaks ties between tool globs
-- of equal specificity by their order in the document, and people expect to read back what they
-- wrote; jsonb reorders object keys (shortest first), json keeps the text as given.
ALTER TABLE policies ALTER COLUMN draft TYPE json USING draft::json;
ALTER TABLE policy_versions ALTER COLUMN document TYPE json USING document::json;
