<%@ page contentType="text/plain; charset=UTF-8" %><%
try {
    out.println("host=" + java.net.InetAddress.getLocalHost());
} catch (java.net.UnknownHostException e) {
    out.println("host-error=" + e);
}
out.println("file.encoding=" + System.getProperty("file.encoding"));
out.println("sun.jnu.encoding=" + System.getProperty("sun.jnu.encoding"));
out.println("timezone=" + java.util.TimeZone.getDefault().getID());
out.println("max.memory=" + Runtime.getRuntime().maxMemory());
out.println("pid=" + ProcessHandle.current().pid());
out.println("unicode=\u4f60\u597d");
%>
