"""DICOMweb destinations: results sent by STOW-RS (stow), and an interrupted sending
settled by QIDO-RS (query), over one client per destination (client), all through the
`dicomweb-client` package. node.work.delivery drives them as it drives C-STORE."""
