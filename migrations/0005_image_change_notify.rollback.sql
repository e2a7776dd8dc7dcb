DROP TRIGGER images_notify_truncate ON images;
DROP TRIGGER images_notify_change ON images;
DROP FUNCTION retina_notify_image_change();
