fn main() {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&a[1]);
    let out = std::path::PathBuf::from(&a[2]);
    let e = artifact::objects::scan_dir(&dir).unwrap();
    let m = artifact::Manifest::from_entries("web", "1.0.0", None, e).unwrap();
    let order = m.objects();
    let paths = m.object_paths(&dir);
    let f = std::fs::File::create(out.join("pack.zst")).unwrap();
    artifact::objects::write_pack(
        &order,
        |d| paths.get(d).cloned(),
        std::io::BufWriter::new(f),
        2,
        artifact::objects::Check::Size,
    )
    .unwrap();
    std::fs::write(out.join("manifest.json"), m.to_canonical_bytes()).unwrap();
}
