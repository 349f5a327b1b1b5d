//! ImageNet-layout image folders: `<dir>/train/<class>/*.{png,jpg,jpeg}` and
//! `<dir>/val/<class>/...` (or `test/`), the layout of torchvision's `ImageFolder` and of the
//! ImageNet validation set after the usual re-sorting into class folders.
//!
//! Classes are the sorted names of the sub-folders of `train/` (label = index); the validation
//! split must use the same names (a subset is allowed). Each image is decoded (PNG or JPEG, any
//! colour type, converted to RGB), resized so that its shorter side is `round(size * 256 / 224)`
//! (bilinear) and centre-cropped to `size x size`: torchvision's evaluation transform
//! `Resize(256) + CenterCrop(224)` of the seeds' ImageNet recipes, scaled to `size`. Images are
//! held in memory as `u8` (3 x size x size bytes each): pass a smaller `--image-size` or
//! `--train-limit` for large folders.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::data::{DataError, Dataset};

/// Normalisation of the seeds' ImageNet recipes (torchvision): per-channel mean of `x/255`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of `x/255` (torchvision's ImageNet values).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// The class names of an image folder: the sorted sub-folder names of `<dir>/train`.
///
/// # Errors
/// [`DataError::Missing`] when `<dir>/train` does not exist, [`DataError::Format`] when it has no
/// class folder or more than 65,536.
pub fn folder_classes(dir: &Path) -> Result<Vec<String>, DataError> {
    let train = dir.join("train");
    if !train.is_dir() {
        return Err(DataError::Missing {
            path: train,
            hint: "an image folder holds train/<class>/*.png|jpg and val/<class>/... \
                   (ImageNet layout); pass its root with --data-dir"
                .into(),
        });
    }
    let classes: Vec<String> = sorted_entries(&train)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if classes.is_empty() || classes.len() > 1 << 16 {
        return Err(DataError::Format {
            path: train,
            msg: format!("{} class folders (need 1..=65536)", classes.len()),
        });
    }
    Ok(classes)
}

/// Decodes `path`, resizes its shorter side to `round(size * 256 / 224)` and centre-crops
/// `size x size`; returns CHW `u8` (R, G, B planes).
///
/// # Errors
/// [`DataError::Format`] when the file is not a decodable PNG / JPEG.
pub fn load_image(path: &Path, size: usize) -> Result<Vec<u8>, DataError> {
    let img = image::ImageReader::open(path)
        .map_err(io_err(path))?
        .with_guessed_format()
        .map_err(io_err(path))?
        .decode()
        .map_err(|e| DataError::Format { path: path.to_path_buf(), msg: e.to_string() })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::Format { path: path.to_path_buf(), msg: "empty image".into() });
    }
    let short = ((size as f64) * 256.0 / 224.0).round().max(size as f64) as u32;
    let (nw, nh) = if w <= h {
        (short, ((h as u64 * short as u64 + w as u64 / 2) / w as u64).max(short as u64) as u32)
    } else {
        (((w as u64 * short as u64 + h as u64 / 2) / h as u64).max(short as u64) as u32, short)
    };
    let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
    let s = size as u32;
    let (x0, y0) = ((nw - s) / 2, (nh - s) / 2);
    let mut out = vec![0u8; 3 * size * size];
    for y in 0..s {
        for x in 0..s {
            let p = resized.get_pixel(x0 + x, y0 + y).0;
            for c in 0..3 {
                out[(c * size + y as usize) * size + x as usize] = p[c];
            }
        }
    }
    Ok(out)
}

fn load_split(root: &Path, classes: &[String], size: usize) -> Result<Dataset, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for p in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(DataError::Format {
                path: p,
                msg: format!(
                    "class folder '{name}' is not among the {} train classes",
                    classes.len()
                ),
            });
        };
        for f in sorted_entries(&p)? {
            let ext = f.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            if !EXTENSIONS.contains(&ext.as_str()) {
                continue;
            }
            images.extend_from_slice(&load_image(&f, size)?);
            labels.push(label as u16);
        }
    }
    if labels.is_empty() {
        return Err(DataError::Format {
            path: root.to_path_buf(),
            msg: "no .png / .jpg / .jpeg image in any class folder".into(),
        });
    }
    Ok(Dataset { images, labels, shape: [3, size, size] })
}

/// Loads (train, validation) of the image folder `dir` at `size x size` (see the module docs),
/// and the class names. The validation split is `val/`, else `test/`.
///
/// # Errors
/// [`DataError::Missing`] for a missing `train/` or validation folder, [`DataError::Format`] for
/// an empty split, a validation class unknown to `train/`, an undecodable image or a `size`
/// outside 8..=1024.
pub fn load_image_folder(
    dir: &Path,
    size: usize,
) -> Result<(Dataset, Dataset, Vec<String>), DataError> {
    if !(8..=1024).contains(&size) {
        return Err(DataError::Format {
            path: dir.to_path_buf(),
            msg: format!("--image-size {size}: must be 8..=1024"),
        });
    }
    let classes = folder_classes(dir)?;
    let val =
        ["val", "test"].iter().map(|s| dir.join(s)).find(|p| p.is_dir()).ok_or_else(|| {
            DataError::Missing {
                path: dir.join("val"),
                hint: "the validation split is val/<class>/... (or test/<class>/...)".into(),
            }
        })?;
    let train = load_split(&dir.join("train"), &classes, size)?;
    let test = load_split(&val, &classes, size)?;
    Ok((train, test, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, w: u32, h: u32, rgb: [u8; 3], jpeg: bool) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = image::RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                image::Rgb(rgb)
            } else {
                image::Rgb([rgb[2], rgb[1], rgb[0]])
            }
        });
        if jpeg {
            img.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
        } else {
            img.save(path).unwrap();
        }
    }

    #[test]
    fn folder_loads_resizes_crops_and_labels() {
        let d = std::env::temp_dir().join(format!("polypi-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        write(&d.join("train/cat/a.png"), 40, 30, [200, 10, 10], false);
        write(&d.join("train/cat/b.jpg"), 30, 50, [200, 10, 10], true);
        write(&d.join("train/dog/c.png"), 64, 64, [10, 200, 10], false);
        std::fs::write(d.join("train/dog/notes.txt"), "ignored").unwrap();
        write(&d.join("val/dog/d.png"), 20, 20, [10, 200, 10], false);
        let (tr, te, classes) = load_image_folder(&d, 16).unwrap();
        assert_eq!(classes, vec!["cat", "dog"]);
        assert_eq!(tr.labels, vec![0, 0, 1]);
        assert_eq!(te.labels, vec![1]);
        assert_eq!(tr.shape, [3, 16, 16]);
        assert_eq!(tr.images.len(), 3 * 3 * 16 * 16);
        // A uniform left half stays uniform after resize + centre crop: pixel (0, 0) of the
        // 64x64 dog image (green channel 200, red 10).
        let dog = tr.image(2);
        assert_eq!((dog[0], dog[16 * 16]), (10, 200));
        // A validation class unknown to train/ is an error naming the folder.
        write(&d.join("val/bird/e.png"), 20, 20, [1, 2, 3], false);
        let e = load_image_folder(&d, 16).unwrap_err().to_string();
        assert!(e.contains("bird"), "{e}");
        std::fs::remove_dir_all(d.join("val/bird")).unwrap();
        // A corrupt image is an error naming the file.
        std::fs::write(d.join("train/cat/z.png"), b"not a png").unwrap();
        let e = load_image_folder(&d, 16).unwrap_err().to_string();
        assert!(e.contains("z.png"), "{e}");
        assert!(load_image_folder(&d, 4).is_err());
        assert!(load_image_folder(&d.join("nothing"), 16).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
