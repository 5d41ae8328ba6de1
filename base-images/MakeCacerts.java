// Builds a Java truststore (PKCS12) from PEM/DER certificate files in ONE JVM.
// Run with the single-file source launcher (needs the jdk.compiler module,
// which Debian's openjdk-17-jre-headless ships):
//
//   java MakeCacerts.java OUT PASSWORD [--mac] FILE.crt...
//
// Aliases follow Debian's ca-certificates-java: "debian:<name>.pem", where
// <name> is the file name without ".crt" (lowercased by PKCS12 rules of
// keytool as well). Files are imported in sorted order.
//
// Default output is deterministic: no certificate encryption and no MAC
// (security properties keystore.pkcs12.certProtectionAlgorithm and
// keystore.pkcs12.macAlgorithm = NONE, supported since JDK 11.0.12/17), so
// the same inputs give the same bytes. Java opens such a store with any
// password (or none), including "changeit". With --mac the store is
// password-protected the JDK default way (random salts: bytes differ per run).
import java.io.*;
import java.nio.file.*;
import java.security.*;
import java.security.cert.*;
import java.util.*;

public class MakeCacerts {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: java MakeCacerts.java OUT PASSWORD [--mac] FILE...");
            System.exit(2);
        }
        Path out = Paths.get(args[0]);
        char[] pw = args[1].toCharArray();
        int first = 2;
        boolean mac = false;
        if (args[2].equals("--mac")) { mac = true; first = 3; }
        if (!mac) {
            Security.setProperty("keystore.pkcs12.certProtectionAlgorithm", "NONE");
            Security.setProperty("keystore.pkcs12.macAlgorithm", "NONE");
        }
        List<String> files = new ArrayList<>(Arrays.asList(args).subList(first, args.length));
        Collections.sort(files);
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        KeyStore ks = KeyStore.getInstance("PKCS12");
        ks.load(null, null);
        int n = 0;
        for (String f : files) {
            String base = Paths.get(f).getFileName().toString().replaceFirst("\\.crt$", "");
            Collection<? extends java.security.cert.Certificate> certs;
            try (InputStream in = new BufferedInputStream(Files.newInputStream(Paths.get(f)))) {
                certs = cf.generateCertificates(in);
            }
            if (certs.isEmpty()) throw new IOException("no certificate in " + f);
            int i = 0;
            for (java.security.cert.Certificate c : certs) {
                String alias = ("debian:" + base + (i == 0 ? "" : "-" + i) + ".pem").toLowerCase(Locale.ROOT);
                if (ks.containsAlias(alias)) throw new IOException("duplicate alias " + alias);
                ks.setCertificateEntry(alias, c);
                i++;
                n++;
            }
        }
        Path tmp = Paths.get(out.toString() + ".tmp");
        try (OutputStream os = Files.newOutputStream(tmp)) {
            ks.store(os, pw);
        }
        Files.move(tmp, out, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        System.err.println("make-cacerts: wrote " + n + " certificates to " + out + (mac ? " (with MAC)" : " (no MAC, deterministic)"));
    }
}
