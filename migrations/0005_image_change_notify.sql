-- Image-store replicas cache image rows for serving; every change to `images` tells them at once.
-- The NOTIFY is sent by the changing transaction itself and delivered only if it commits.
-- depends: 0004_stream_recovery

CREATE FUNCTION retina_notify_image_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('retina_image_changed', '*');
    ELSE
        PERFORM pg_notify('retina_image_changed', OLD.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER images_notify_change AFTER UPDATE OR DELETE ON images
    FOR EACH ROW EXECUTE FUNCTION retina_notify_image_change();
CREATE TRIGGER images_notify_truncate AFTER TRUNCATE ON images
    FOR EACH STATEMENT EXECUTE FUNCTION retina_notify_image_change();
